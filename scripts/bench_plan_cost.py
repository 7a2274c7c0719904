"""What the plan's menu costs per matrix: every default-menu candidate timed on one matrix of
each given shape (random weights, a Gram from random correlated inputs, random positive
Fisher rows and gradient magnitudes), and one GPTQ run beside it for the ratio. The planning
pass of a model costs the sum over its matrices (the forward pass over the calibration
windows comes on top), so a 7B estimate is 32 x (4 x the 4096x4096 time + 3 x the
11008x4096-shaped times) from these numbers.

    python scripts/bench_plan_cost.py --shape 576x576 --shape 1536x576 --threads 1
    python scripts/bench_plan_cost.py --shape 4096x4096 --shape 11008x4096 --shape 4096x11008

Writes one JSON line per shape to benchmarks/plan_cost.jsonl (commit, threads, device).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _target(m: int, n: int, device: str):
    import torch

    from compressor.core.types import LinearStats, Target
    g = torch.Generator().manual_seed(0)
    w = torch.randn(m, n, generator=g) / n ** 0.5
    x = torch.randn(2048, n, generator=g) @ (torch.randn(n, n, generator=g) / n ** 0.5)
    stats = LinearStats(ntokens=2048, gram=(x.T @ x).to(device),
                        fisher_rows=torch.rand(m, generator=g).to(device),
                        grad_absmean=torch.rand(m, n, generator=g).to(device))
    return Target(name="bench", layer_index=0, kind="q_proj", weight=w.to(device), bias=None,
                  stats=stats, generator=torch.Generator(device=device).manual_seed(0),
                  dtype=torch.bfloat16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", action="append", required=True, help="OUTxIN, repeatable")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    from compressor.core.registry import get_method
    plan_cls, gptq_cls = get_method("plan"), get_method("gptq")
    cfg = plan_cls.Config(bits=4)
    names = cfg.names()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    for shape in a.shape:
        m, n = (int(v) for v in shape.lower().split("x"))
        t = _target(m, n, a.device)
        plan = plan_cls()
        seconds = {}
        for j, name in enumerate(names):
            t0 = time.perf_counter()
            module = plan._run(t, cfg, j).module
            plan._error(t, cfg, module)
            seconds[name] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        gptq_cls().compress(t, gptq_cls.Config(bits=4, group_size=128))
        gptq_s = time.perf_counter() - t0
        row = {"shape": [m, n], "commit": commit, "threads": a.threads, "device": a.device,
               "menu_s": round(sum(seconds.values()), 2), "gptq_w4_s": round(gptq_s, 3),
               "ratio_to_gptq": round(sum(seconds.values()) / gptq_s, 1), "per_candidate_s": seconds}
        print(json.dumps(row), flush=True)
        with (ROOT / "benchmarks" / "plan_cost.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
