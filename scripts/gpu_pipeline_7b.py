"""Whole-pipeline wall time of each method on Llama-2-7B-shaped decoder layers (random weights).

Builds a LlamaForCausalLM from Llama-2-7B's config with ``--layers`` decoder layers (random
weights: the timing, not the quality, is the point), calibrates on the builtin text with the
7B protocol (128 × 2048 by default) and runs every method through ``compressor.api.compress``
on ``--device``. Per-layer time × 32 plus the fixed stages estimates a full 7B run.
Results are appended to ``--out`` as JSON lines as each method finishes.

    python scripts/gpu_pipeline_7b.py --device cuda --layers 2 --out gpu7b.jsonl
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = {
    "rtn-w4": [{"method": "rtn", "bits": 4, "group_size": 128}],
    "gptq-w4": [{"method": "gptq", "bits": 4, "group_size": 128}],
    "gptq-w4+eora-r64": [{"method": "gptq", "bits": 4, "group_size": 128}, {"method": "eora", "rank": 64}],
    "svd-20": [{"method": "svd", "ratio": 0.2}],
    "whitened-svd-20": [{"method": "whitened-svd", "ratio": 0.2}],
    "welore-50": [{"method": "welore", "ratio": 0.5}],
    "fwsvd-20": [{"method": "fwsvd", "ratio": 0.2}],
    "gwq-w3-1pct": [{"method": "gwq", "bits": 3, "outlier_frac": 0.01}],
    "lost-20": [{"method": "lost", "ratio": 0.2}],
    "lqlora-2.75": [{"method": "lqlora", "bits": 2.75, "rank": 64}],
    "cospadi-30": [{"method": "cospadi", "ratio": 0.3}],
}


def build_model(folder: Path, layers: int, dtype: torch.dtype) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import _train_tokenizer
    text = (ROOT / "calib_data" / "wiki_calib.txt").read_text()
    tok = _train_tokenizer(text[:400_000], vocab=4000)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                      rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg).to(dtype)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--grad-samples", type=int, default=16)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--work", default="/tmp/svdc-gpu7b")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from compressor.api import compress
    from compressor.recipe import parse_recipe

    work = Path(args.work)
    model_dir = work / f"llama2-7b-shape-{args.layers}l"
    if not model_dir.exists():
        t = time.perf_counter()
        build_model(model_dir, args.layers, torch.float16)
        print(f"built {model_dir} in {time.perf_counter() - t:.1f}s", flush=True)
    dev_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    for name, stages in METHODS.items():
        if args.only and name not in args.only:
            continue
        out = work / "out" / name
        recipe = parse_recipe({"model": str(model_dir), "device": args.device, "dtype": "float16",
                               "stages": stages, "output": str(out),
                               "calibration": {"dataset": "builtin", "nsamples": args.nsamples,
                                               "seqlen": args.seqlen, "seed": 0},
                               "gradients": {"nsamples": args.grad_samples}})
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        try:
            res = compress(recipe, force=True)
            rep = res.report
            row = {"method": name, "ok": True, "wall_s": time.perf_counter() - t,
                   "stage_seconds": rep["stage_seconds"], "peak_memory": rep["peak_memory"],
                   "bits_per_weight": rep["totals"]["targets"]["bits_per_weight"],
                   "params_kept": rep["totals"]["targets"]["params_kept"],
                   "mean_output_rel_err": sum(r["output_rel_err"] or 0 for r in rep["modules"]) / len(rep["modules"])}
            per_layer = rep["stage_seconds"].get("layers", 0.0) / args.layers
            fixed = sum(v for k, v in rep["stage_seconds"].items() if k in ("load", "data", "write"))
            scaled = sum(v for k, v in rep["stage_seconds"].items() if k in ("gradients", "plan"))
            row["est_7b_32_layers_s"] = per_layer * 32 + fixed + scaled * 32 / args.layers
        except Exception as e:  # noqa: BLE001 - record and go on to the next method
            row = {"method": name, "ok": False, "wall_s": time.perf_counter() - t, "error": f"{type(e).__name__}: {e}"}
        row.update({"device": dev_name, "layers": args.layers, "nsamples": args.nsamples, "seqlen": args.seqlen,
                    "torch": torch.__version__})
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
