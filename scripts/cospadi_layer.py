#!/usr/bin/env python
"""CoSpaDi on one real SmolLM2 layer: time per stage and the calibration-side objective.

    python scripts/cospadi_layer.py --layer 3 [--iters 10] [--set key=value ...] [--profile]

Grams come from the dense model on the bench's calibration (builtin, 8 x 512, seed 0) and are
cached under /tmp. Prints, per linear, k, s, the relative whitened error after each iteration
(the objective K-SVD minimizes; never the held-out split) and the seconds spent.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def layer_grams(layer: int, nsamples: int, seqlen: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    cache = Path(f"/tmp/svdc-cospadi-grams-l{layer}-{nsamples}x{seqlen}.pt")
    if cache.exists():
        return torch.load(cache)
    from compressor.data import calibration_windows
    from compressor.models import load_model
    model, tok, _ = load_model("smollm2-135m", dtype="float32")
    blk = model.model.layers[layer]
    mods = {n: (getattr(blk.self_attn, n) if hasattr(blk.self_attn, n) else getattr(blk.mlp, n))
            for n in LINEARS}
    grams: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_mod, args):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            grams[name] = grams.get(name, 0) + x.T @ x
        return fn

    hs = [m.register_forward_pre_hook(hook(n)) for n, m in mods.items()]
    ids = calibration_windows(tok, "builtin", nsamples, seqlen, seed=0)
    with torch.no_grad():
        for i in range(ids.shape[0]):
            model(ids[i:i + 1])
    for h in hs:
        h.remove()
    out = {n: (m.weight.detach().clone(), grams[n]) for n, m in mods.items()}
    torch.save(out, cache)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layer", type=int, default=3)
    p.add_argument("--linears", default=",".join(LINEARS))
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--set", action="append", default=[], help="CoSpaDiConfig key=value")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from compressor.core.registry import get_method
    from compressor.core.types import LinearStats, Target
    grams = layer_grams(args.layer, 8, 512)
    method = get_method("cospadi")()
    kw = {"ratio": args.ratio}
    for kv in args.set:
        k, v = kv.split("=", 1)
        kw[k] = json.loads(v) if v[:1] in "0123456789-[{tn" else v
    cfg = method.Config(**kw)
    rows, total = [], 0.0
    prof = cProfile.Profile() if args.profile else None
    for name in args.linears.split(","):
        W, gram = grams[name]
        tgt = Target(name=name, layer_index=args.layer, kind=name, weight=W, bias=None,
                     stats=LinearStats(ntokens=8 * 512, gram=gram),
                     generator=torch.Generator().manual_seed(0), dtype=torch.float32)
        if prof:
            prof.enable()
        t = time.perf_counter()
        res = method.compress(tgt, cfg)
        dt = time.perf_counter() - t
        if prof:
            prof.disable()
        total += dt
        info = res.info
        rows.append({"linear": name, "k": info["k"], "s": info["s"], "seconds": round(dt, 2),
                     "final_rel_error": info["final_rel_error"], "rel_errors": info["rel_errors"],
                     **{k: info[k] for k in ("timings", "stopped_at", "best_iter", "fallback")
                        if k in info}})
        print(json.dumps(rows[-1]), flush=True)
    print(f"total {total:.1f} s  mean final_rel_error "
          f"{sum(r['final_rel_error'] for r in rows) / len(rows):.5f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"config": kw, "rows": rows, "total_s": total}, indent=1))
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
