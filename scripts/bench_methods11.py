#!/usr/bin/env python
"""Print the issue-11 comparison rows (method vs baseline, same budget) as markdown from the
results.json files scripts/bench.py wrote: benchmarks/results.json (the shared rows) and any
benchmarks/methods11/**/results.json (rows run one per folder so they could run side by side).

    python scripts/bench_methods11.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Closer than this (relative) is a tie: runs that differ only by float rounding (another SVD
# routine for the same factors) move a compressed model's perplexity on 16 windows this much.
TIE = 0.01
PAIRS = [
    ("LOST data-free (--calib random) vs SVD, ratio 0.1", "lost-df-r0.1", ["svd-r0.1"]),
    ("LOST data-free (--calib random) vs SVD, ratio 0.2", "lost-df-r0.2", ["svd-r0.2"]),
    ("its rank-only case (same scales), ratio 0.1", "lost-df-rank-r0.1", ["svd-r0.1"]),
    ("LOST weight-only (act_scale=false) vs SVD, ratio 0.1", "lost-r0.1", ["svd-r0.1"]),
    ("LOST weight-only (act_scale=false) vs SVD, ratio 0.2", "lost-r0.2", ["svd-r0.2"]),
    ("LOST default (text-calibrated scales) vs whitened SVD, ratio 0.1", "lost-s-r0.1",
     ["wsvd-r0.1"]),
    ("LOST whiten vs whitened SVD, ratio 0.1", "lost-w-r0.1", ["wsvd-r0.1"]),
    ("LOST whiten vs whitened SVD, ratio 0.2", "lost-w-r0.2", ["wsvd-r0.2"]),
    ("FWSVD whiten vs whitened SVD, ratio 0.1", "fwsvd-w-r0.1", ["wsvd-r0.1"]),
    ("FWSVD whiten vs whitened SVD, ratio 0.2", "fwsvd-w-r0.2", ["wsvd-r0.2"]),
    ("whitened SVD + WeLore vs uniform, ratio 0.1", "wsvd-welore-r0.1", ["wsvd-r0.1"]),
    ("whitened SVD + WeLore vs uniform, ratio 0.2", "wsvd-welore-r0.2", ["wsvd-r0.2"]),
]


def rows() -> dict:
    out = {}
    files = [ROOT / "benchmarks" / "results.json"] + sorted((ROOT / "benchmarks" / "methods11").rglob("results.json"))
    for f in files:
        if f.is_file():
            for k, r in json.loads(f.read_text())["rows"].items():
                if r.get("status") == "ok" and r.get("ppl") is not None:
                    out[k] = r
    return out


def budget(r: dict) -> str:
    t = (r.get("totals") or {}).get("targets") or {}
    if r.get("family") == "quant":
        return f"{t.get('bits_per_weight', float('nan')):.3f} bits"
    return f"{t.get('params_kept', float('nan')):.3f} kept"


def main() -> None:
    rs = rows()
    print("| comparison | method | ppl | stored | baseline | ppl | stored | beats? |")
    print("|---|---|---:|---:|---|---:|---:|---|")
    for title, m, bases in PAIRS:
        for b in bases:
            rm, rb = rs.get(m), rs.get(b)
            fmt = lambda r: "not run" if r is None else f"{r['ppl']:.4g}"  # noqa: E731
            st = lambda r: "" if r is None else budget(r)  # noqa: E731
            verdict = "–" if rm is None or rb is None else (
                "yes" if rm["ppl"] < rb["ppl"] * (1 - TIE) else
                ("**no**" if rm["ppl"] > rb["ppl"] * (1 + TIE) else "tie (within 1%)"))
            print(f"| {title} | {m} | {fmt(rm)} | {st(rm)} | {b} | {fmt(rb)} | {st(rb)} | {verdict} |")
    print()
    for k in sorted(rs):
        if k in {m for _, m, _ in PAIRS} or k in {b for _, _, bs in PAIRS for b in bs}:
            print(f"- `{k}`: `{rs[k].get('command', '')}`")


if __name__ == "__main__":
    main()
