#!/usr/bin/env python
"""LQ-LoRA against RTN and GPTQ per matrix, on calibration windows the fit never saw.

    python scripts/lqlora_layers.py --layers 0,7,15,29 [--rank 8] [--json F]

Issue 27: LQ-LoRA at RTN's bits lost on text outside the repository. This measures, per
linear of the given SmolLM2 layers (inputs from the dense model), the relative output error
sqrt(tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)) on a held-out Gram (calibration split, another seed) of:
RTN and GPTQ 3-bit g64, and LQ-LoRA at each fixed NF configuration (fit on the fit Gram),
with the bits per weight each writes. Never reads the test split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def grams(layers: list[int], nsamples: int, seqlen: int, seed: int) -> dict:
    """Dense-model input Grams of every linear of ``layers`` on calibration windows."""
    cache = Path(f"/tmp/svdc-lq-grams-{'-'.join(map(str, layers))}-{nsamples}x{seqlen}-s{seed}.pt")
    if cache.exists():
        return torch.load(cache)
    from compressor.data import calibration_windows
    from compressor.models import load_model
    model, tok, _ = load_model("smollm2-135m", dtype="float32")
    out, hooks = {}, []
    for li in layers:
        blk = model.model.layers[li]
        for n in LINEARS:
            mod = getattr(blk.self_attn, n) if hasattr(blk.self_attn, n) else getattr(blk.mlp, n)

            def fn(_m, args, key=(li, n)):
                x = args[0].reshape(-1, args[0].shape[-1]).float()
                out[key] = out.get(key, 0) + x.T @ x
            hooks.append(mod.register_forward_pre_hook(fn))
            out[("w", li, n)] = mod.weight.detach().clone()
    ids = calibration_windows(tok, "builtin", nsamples, seqlen, seed=seed)
    with torch.no_grad():
        for i in range(ids.shape[0]):
            model(ids[i:i + 1])
    for h in hooks:
        h.remove()
    torch.save(out, cache)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", default="0,7,15,29")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--nf-bits", default="2,3,4")
    p.add_argument("--block-sizes", default="64,256,1024")
    p.add_argument("--max-iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from compressor.core.registry import get_method
    from compressor.core.types import LinearStats, Target
    from compressor.core.measures import relative_output_error, weight_bytes
    layers = [int(x) for x in args.layers.split(",")]
    fit = grams(layers, args.nsamples, args.seqlen, seed=0)
    held = grams(layers, args.nsamples, args.seqlen, seed=1)
    ntok = args.nsamples * args.seqlen
    cands = [("rtn", {"bits": 3, "group_size": 64}), ("gptq", {"bits": 3, "group_size": 64})]
    cands += [("lqlora", {"mixed": False, "bits": b, "block_size": bs, "rank": args.rank,
                          "error": "output", "max_iters": args.max_iters})
              for b in map(int, args.nf_bits.split(",")) for bs in map(int, args.block_sizes.split(","))]
    rows = []
    for li in layers:
        for n in LINEARS:
            w, gf, gh = fit[("w", li, n)], fit[(li, n)], held[(li, n)]
            row = {"layer": li, "linear": n, "shape": list(w.shape)}
            for meth, kw in cands:
                m = get_method(meth)()
                cfg = m.Config(**kw)
                tgt = Target(name=f"l{li}.{n}", layer_index=li, kind=n, weight=w, bias=None,
                             stats=LinearStats(ntokens=ntok, gram=gf),
                             generator=torch.Generator().manual_seed(0), dtype=torch.float16)
                t = time.perf_counter()
                res = m.compress(tgt, cfg)
                dt = time.perf_counter() - t
                dense = res.module.dense_weight().float()
                key = meth if meth != "lqlora" else f"nf{kw['bits']}-b{kw['block_size']}-r{kw['rank']}"
                row[key] = {"bits": round(8 * weight_bytes(res.module) / w.numel(), 4),
                            "fit": round(relative_output_error(w - dense, w, gf), 5),
                            "held": round(relative_output_error(w - dense, w, gh), 5), "s": round(dt, 2),
                            **({"iters": res.info["iterations"]} if "iterations" in res.info else {})}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
