#!/usr/bin/env python
"""CoSpaDi's speed levers, one row each, on one real SmolLM2 layer (all seven linears).

    python scripts/cospadi_levers.py --layer 3 --out /tmp/levers.json [--only name,...]

Each row: wall and CPU seconds for the layer's seven linears, and the calibration-side
objective (relative whitened error per linear and its mean) — the quantity the solvers
minimize and the only one defaults are chosen on (never the held-out split). Grams from
the dense model on the bench's calibration (builtin, 8 x 512, seed 0), see cospadi_layer.py.
Also times the primitives behind two levers: the initial subspace (full SVD vs eigh of the
smaller Gram) and the whitening that q/k/v (and gate/up) could share.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from cospadi_layer import LINEARS, layer_grams  # noqa: E402

LEVERS = {
    # name: (CoSpaDiConfig overrides, what it measures)
    "before: ksvd 10 it": ({"solver": "ksvd", "iters": 10}, "classic K-SVD, the old default"),
    "ksvd 3 it": ({"solver": "ksvd", "iters": 3}, "fewer K-SVD sweeps"),
    "fast omp-coding 5 it": ({"coding": "omp", "iters": 5, "tol": 0.0},
                             "fast solver, supports by OMP (progressive Cholesky) instead of thresholding"),
    "fast 5 it": ({"iters": 5, "tol": 0.0}, "fast solver, 5 iterations"),
    "fast 10 it": ({"iters": 10, "tol": 0.0}, "fast solver, 10 iterations"),
    "fast 16 it no early stop": ({"iters": 16, "tol": 0.0}, "fast solver, 16 iterations"),
    "fast fp64": ({"precision": "float64"}, "default but float64 GEMMs"),
    "fast cg 1": ({"cg_steps": 1}, "default but 1 CG step per refit"),
    "fast cg 4": ({"cg_steps": 4}, "default but 4 CG steps per refit"),
    "after: fast default": ({}, "16 iterations, early stop tol 1e-3, fp32 GEMMs, 2 CG steps"),
}


def run(layer: int, overrides: dict, grams) -> dict:
    from compressor.core.registry import get_method
    from compressor.core.types import LinearStats, Target
    method = get_method("cospadi")()
    cfg = method.Config(ratio=0.2, **overrides)
    per, wall, cpu = {}, 0.0, 0.0
    for name in LINEARS:
        W, gram = grams[name]
        tgt = Target(name=name, layer_index=layer, kind=name, weight=W, bias=None,
                     stats=LinearStats(ntokens=8 * 512, gram=gram),
                     generator=torch.Generator().manual_seed(0), dtype=torch.float32)
        t, c = time.perf_counter(), time.process_time()
        info = method.compress(tgt, cfg).info
        wall += time.perf_counter() - t
        cpu += time.process_time() - c
        per[name] = {"err": info["final_rel_error"], "iters": info["iters"]}
    mean = sum(v["err"] for v in per.values()) / len(per)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "mean_rel_error": round(mean, 5),
            "per_linear": per}


def primitives(grams) -> dict:
    from compressor.primitives.ksvd import _initial_dictionary
    from compressor.primitives.linalg import whitening
    out = {}
    for name in ("gate_proj", "down_proj", "q_proj"):
        W, gram = grams[name]
        L, _ = whitening(gram, 0.01)
        Y = L.mT @ W.double().mT
        k = {"gate_proj": 508, "down_proj": 384, "q_proj": 301}[name]
        row = {}
        for how in ("svd", "eigh"):
            t = time.perf_counter()
            _initial_dictionary(Y, k, torch.Generator().manual_seed(0), method=how)
            row[f"init_{how}_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        whitening(gram, 0.01)
        row["whitening_s"] = round(time.perf_counter() - t, 3)
        out[name] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layer", type=int, default=3)
    p.add_argument("--out", default="/tmp/cospadi_levers.json")
    p.add_argument("--only", default=None, help="comma-separated lever names")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    grams = layer_grams(args.layer, 8, 512)
    names = args.only.split(",") if args.only else list(LEVERS)
    res = {"layer": args.layer, "threads": args.threads, "rows": {}}
    res["primitives"] = primitives(grams)
    print(json.dumps(res["primitives"]), flush=True)
    for name in names:
        over, what = LEVERS[name]
        row = run(args.layer, over, grams)
        row.update(config=over, what=what)
        res["rows"][name] = row
        print(json.dumps({name: row}), flush=True)
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
