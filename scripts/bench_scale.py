"""Wall time of 1 vs N data-parallel ranks (gloo on CPU, or NCCL on GPUs) on a synthetic Llama.

    python scripts/bench_scale.py --work /tmp/bench-scale --ranks 1 2 --methods whitened-svd gptq

Builds (once) a random-weight Llama with a BPE tokenizer trained on the builtin text, then runs
`python -m compressor compress ... --nproc N` for each (method, N) and prints a Markdown table of
wall seconds (the whole command: process start, load, calibration, compression, write) and the
report's per-stage seconds. Every run's output must match: the table's last column is the
largest relative difference of any compressed weight from the 1-rank run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build_model(folder: Path, hidden: int, inter: int, layers: int) -> Path:
    if (folder / "config.json").is_file():
        return folder
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    text = (ROOT / "calib_data" / "wiki_calib.txt").read_text()[:200_000]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                     eos_token="</s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(hf_tok), hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                      max_position_embeddings=1024, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-scale"))
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--methods", nargs="+", default=["whitened-svd", "gptq"])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--inter", type=int, default=1376)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    model = build_model(a.work / "model", a.hidden, a.inter, a.layers)
    flags = {"whitened-svd": ["--ratio", "0.3"], "gptq": ["--bits", "4", "--group-size", "128"],
             "fwsvd": ["--ratio", "0.3"]}
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": str(ROOT)}
    rows = []
    for m in a.methods:
        ref = None
        for n in a.ranks:
            out = a.work / f"{m}-{n}"
            cmd = [sys.executable, "-m", "compressor", "compress", str(model), "--method", m,
                   *flags[m], "--calib", "builtin", "--nsamples", str(a.nsamples), "--seqlen",
                   str(a.seqlen), "--seed", "0", "-o", str(out), "--force", "--nproc", str(n)]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t
            rep = json.loads((out / "report.json").read_text())
            st = rep["stage_seconds"]
            diff = "ref"
            if ref is None:
                ref = out
            else:
                diff = f"{_max_rel_diff(ref, out):.1e}"
            rows.append((m, n, wall, st.get("load", 0), st.get("layers.calibrate", 0),
                         st.get("layers.compress", 0), st.get("layers.propagate", 0),
                         st.get("layers", 0), diff))
            print(rows[-1], flush=True)
    print("\n| method | ranks | wall s | load s | calibrate s | compress s | propagate s | layers s | max rel diff vs 1 rank |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.1f} | {r[7]:.1f} | {r[8]} |")


def _max_rel_diff(a: Path, b: Path) -> float:
    import compressor
    from compressor.parts import CompressedLinear
    ma, mb = compressor.load(a), compressor.load(b)
    mods_b = dict(mb.named_modules())
    worst = 0.0
    for name, m in ma.named_modules():
        if isinstance(m, CompressedLinear):
            wa, wb = m.dense_weight(), mods_b[name].dense_weight()
            worst = max(worst, float((wa - wb).abs().max() / wa.abs().max()))
    return worst


if __name__ == "__main__":
    main()
