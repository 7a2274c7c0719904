"""svdc's GGUF blocks against llama.cpp's own quantizers, at the same block format.

For each of Q4_0, Q8_0 and Q4_1 (32-wide blocks), on one model:
* svdc: GPTQ at the grid that block type holds (4-bit sym / 8-bit sym / 4-bit asym, group 32),
  calibrated on the builtin text's calibration articles, its codes written as that type by
  `svdc export --format gguf` (exact: tests/checkpoint/test_gguf_export.py);
* reference: the dense weights of the same linears through ``gguf.quants.quantize`` (the same
  rounding as llama.cpp's quantize) and back;
both scored on the builtin text's held-out articles, same windows. Appends JSON lines to
benchmarks/gguf_quants.jsonl and prints a table with the ratios.

    python scripts/bench_gguf_quants.py --model gemma3-270m --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRIDS = {"Q4_0": (4, True), "Q8_0": (8, True), "Q4_1": (4, False)}


def reference_ppl(model_name: str, kind: str, svdc_out: Path, windows: int, seqlen: int) -> float:
    """Perplexity of the dense model with the linears svdc compressed in ``svdc_out``
    round-tripped through gguf's reference quantizer of ``kind``."""
    import gguf
    import torch

    from compressor.evaluate import evaluate
    from compressor.models import load_model

    cfg = json.loads((svdc_out / "config.json").read_text())
    targets = sorted(cfg["compression_config"]["modules"])
    model, tok, _ = load_model(model_name, dtype="float32")
    qt = getattr(gguf.GGMLQuantizationType, kind)
    with torch.no_grad():
        for name in targets:
            lin = model.get_submodule(name)
            w = lin.weight.detach().float().numpy()
            lin.weight.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w, qt), qt)))
    return float(evaluate(model, tok, "builtin", seqlen, max_windows=windows)["ppl"])


def svdc_ppl(model_name: str, kind: str, out: Path, nsamples: int, seqlen: int,
             windows: int) -> tuple[float, float, str]:
    """svdc's GPTQ perplexity (its report), seconds, and the GGUF written (or why not)."""
    bits, sym = GRIDS[kind]
    cmd = [str(ROOT / ".venv/bin/svdc"), "compress", model_name, "--method", "gptq", "--bits", str(bits),
           "--group-size", "32", "--set", f"sym={str(sym).lower()}", "--calib", "builtin",
           "--nsamples", str(nsamples), "--seqlen", str(seqlen), "--eval", "builtin",
           "--eval-windows", str(windows), "-o", str(out), "--force"]
    t = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rep = json.loads((out / "report.json").read_text())
    (ev,) = [e for e in rep["eval"] if e["dataset"] == "builtin"]
    secs = time.time() - t
    gguf_file = out.parent / f"{out.name}.gguf"
    exp = subprocess.run([str(ROOT / ".venv/bin/svdc"), "export", str(out), "--format", "gguf", "-o",
                          str(gguf_file), "--force"], capture_output=True, text=True)
    written = str(gguf_file) if exp.returncode == 0 else exp.stderr.strip().splitlines()[-1]
    return float(ev["ppl"]), secs, written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--kinds", nargs="+", default=list(GRIDS))
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "bench-gguf")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in args.kinds:
        ours, secs, gguf_file = svdc_ppl(args.model, kind, args.work / f"{args.model}-{kind}", args.nsamples,
                              args.seqlen, args.windows)
        ref = reference_ppl(args.model, kind, args.work / f"{args.model}-{kind}", args.windows,
                            args.seqlen)
        row = {"model": args.model, "type": kind, "svdc_gptq_ppl": ours, "reference_ppl": ref,
               "ratio": ours / ref, "eval": f"builtin test split, {args.windows}x{args.seqlen}",
               "calibration": f"builtin, {args.nsamples}x{args.seqlen}", "svdc_seconds": secs, "gguf": gguf_file,
               "threads": args.threads, "commit": subprocess.run(
                   ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                   text=True).stdout.strip()}
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(ROOT / "benchmarks" / "gguf_quants.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    print(f"\n| type | svdc GPTQ -> GGUF | gguf reference quantizer | ratio |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['type']} | {r['svdc_gptq_ppl']:.3f} | {r['reference_ppl']:.3f} | {r['ratio']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
