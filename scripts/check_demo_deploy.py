#!/usr/bin/env python
"""Issue 26's demo check: `make demo`'s output, exported to compressed-tensors and to GGUF,
scores the report's perplexity in every form a user loads it in.

    python scripts/check_demo_deploy.py [OUT] [--work DIR]    (make demo-deploy runs both)

OUT defaults to make demo's folder. Four numbers on the report's windows (its dataset, seqlen
and window count), each against the report's perplexity:
- `svdc eval OUT` (the command a user types; it repeats the report's protocol by itself);
- `svdc export --format compressed-tensors`: transformers (dequantize=True) + the PEFT adapter;
- `svdc export --format gguf`: transformers' GGUF loader (which dequantizes the blocks) with
  the `FILE.lora.gguf` paths added as llama.cpp adds them (W + (alpha/r)·B·A);
- the GGUF base alone, for scale (what the paths are worth).
With ``--llama-bin DIR`` (a llama.cpp build), also ``llama-perplexity`` on the GGUF with and
without ``--lora FILE.lora.gguf`` (llama.cpp's protocol: the second half of each chunk, so its
numbers compare with each other, not with svdc's).
Exits 1 if a loaded form differs from the report by more than ``--rtol``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def svdc(*args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "compressor", *args], capture_output=True,
                         text=True, cwd=ROOT)
    if run.returncode != 0:
        sys.exit(f"svdc {' '.join(args)} failed: {run.stderr.strip().splitlines()[-1:]}")
    return run.stdout


def compressed_tensors_model(ct: Path):
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig
    model = AutoModelForCausalLM.from_pretrained(
        ct / "base" if (ct / "base").is_dir() else ct, dtype=torch.float32,
        quantization_config=CompressedTensorsConfig(dequantize=True))
    if (ct / "adapter").is_dir():
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, ct / "adapter")
    return model.eval()


def gguf_model(path: Path, with_lora: bool):
    """transformers' GGUF load of ``path``, with its ``.lora.gguf`` paths merged in."""
    import gguf
    from transformers import AutoModelForCausalLM

    from compressor.checkpoint.gguf_export import _row_order
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32).eval()
    lora = path.with_suffix(".lora.gguf")
    if not with_lora or not lora.exists():
        return model
    reader = gguf.GGUFReader(lora)
    alpha = float(reader.fields["adapter.lora.alpha"].contents())
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    hf_of = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            hf_of[names.get_name(name)] = name
    tensors = {t.name: torch.from_numpy(t.data.copy()).float() for t in reader.tensors}
    for key in [k for k in tensors if k.endswith(".weight.lora_a")]:
        g = key.removesuffix(".weight.lora_a")
        A, B = tensors[key], tensors[g + ".weight.lora_b"]
        name = hf_of[g]
        order = _row_order(name, B.shape[0], model.config)
        if order is not None:                 # undo the export's rope row order
            B = B[torch.argsort(order)]
        w = model.get_submodule(name).weight
        with torch.no_grad():
            w += (alpha / A.shape[0]) * (B @ A)
    return model


def llama_rows(bin_dir: Path, g: Path, rep: dict, chunks: int) -> None:
    """llama-perplexity on the GGUF, base alone and with its LoRA adapter."""
    import re

    from compressor.data import load_split_with_meta
    docs, _ = load_split_with_meta(rep["dataset"], "test")
    text = g.with_name("eval-text.txt")
    text.write_text("\n\n".join(docs))
    for extra in ([], ["--lora", str(g.with_suffix(".lora.gguf"))]):
        cmd = [str(bin_dir / "llama-perplexity"), "-m", str(g), *extra, "-f", str(text),
               "-c", str(rep["seqlen"]), "--chunks", str(chunks), "-t", "2", "-nr"]
        run = subprocess.run(cmd, capture_output=True, text=True)
        found = re.search(r"Final estimate: PPL = ([\d.]+)", run.stdout + run.stderr)
        print(f"llama.cpp {' '.join(cmd[1:])}: "
              + (f"PPL {found.group(1)}" if found else f"failed (rc {run.returncode})"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", nargs="?", default="out/demo-smollm2-gptq4g32-eora64")
    p.add_argument("--work", default=None, help="where the exports go (default OUT-deploy/)")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--llama-bin", type=Path, default=None, help="folder with llama-perplexity")
    p.add_argument("--chunks", type=int, default=16)
    args = p.parse_args()
    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    work = Path(args.work) if args.work else out.with_name(out.name + "-deploy")
    work.mkdir(parents=True, exist_ok=True)
    rep = json.loads((out / "report.json").read_text())["eval"][0]
    want = float(rep["ppl"])
    print(f"report: {rep['dataset']} seqlen {rep['seqlen']}, {rep['n_windows']} windows, "
          f"ppl {want:.4f}")

    from transformers import AutoTokenizer

    from compressor.evaluate import evaluate
    tok = AutoTokenizer.from_pretrained(out)

    def score(model, tokenizer=tok) -> float:
        return float(evaluate(model, tokenizer, rep["dataset"], int(rep["seqlen"]),
                              max_windows=int(rep["n_windows"]))["ppl"])

    rows = [("svdc eval OUT", float(json.loads(svdc("eval", str(out), "--json"))["ppl"]), True)]
    ct = work / "ct"
    svdc("export", str(out), "--format", "compressed-tensors", "-o", str(ct), "--force")
    rows.append(("compressed-tensors (+ PEFT adapter)", score(compressed_tensors_model(ct)), True))
    g = work / "model.gguf"
    svdc("export", str(out), "--format", "gguf", "-o", str(g), "--force")
    gtok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
    rows.append(("GGUF (+ .lora.gguf), transformers' loader", score(gguf_model(g, True), gtok), True))
    rows.append(("GGUF base alone (no paths), for scale", score(gguf_model(g, False), gtok), False))
    bad = []
    print(f"| form | ppl | vs report {want:.4f} |\n|---|---:|---:|")
    for label, ppl, must in rows:
        rel = ppl / want - 1
        print(f"| {label} | {ppl:.4f} | {rel:+.2e} |")
        if must and abs(rel) > args.rtol:
            bad.append(label)
    if args.llama_bin:
        llama_rows(args.llama_bin, g, rep, args.chunks)
    if bad:
        sys.exit(f"differs from the report by more than {args.rtol:g}: {', '.join(bad)}")


if __name__ == "__main__":
    main()
