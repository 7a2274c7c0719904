#!/usr/bin/env python
"""Issue 27's table from one ``scripts/bench_lqlora.sh`` run: perplexity on both texts, bits,
wall time against GPTQ 3-bit g64 of the same invocation, and where each row's time went.

    python scripts/bench_lqlora_table.py bench_out/lqlora [--baseline gptq3g64] [--jsonl F]

Reads each row's ``report.json`` (builtin held-out perplexity, bits per weight, stage
seconds), ``ID.news.json`` (``svdc eval`` on the news text) and ``ID.time`` (/usr/bin/time -v:
wall clock and peak RSS). "compress" is the compress command's wall time less its own
evaluation stage, so the ratio compares the compression work alone.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

STAGES = ("gradients", "plan", "layers.calibrate", "layers.compress", "layers.propagate", "heal")


def wall_and_rss(path: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) from a /usr/bin/time -v log."""
    text = path.read_text()
    clock = re.search(r"Elapsed \(wall clock\) time .*: ([\d:.]+)", text).group(1)
    seconds = 0.0
    for part in clock.split(":"):
        seconds = seconds * 60 + float(part)
    rss_kb = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return seconds, rss_kb / 2**20


def row(out: Path, rid: str) -> dict:
    report = json.loads((out / rid / "report.json").read_text())
    news = json.loads((out / f"{rid}.news.json").read_text())
    wall, rss = wall_and_rss(out / f"{rid}.time")
    stages = report["stage_seconds"]
    return {"id": rid, "bits": report["totals"]["targets"]["bits_per_weight"],
            "builtin": report["eval"][0]["ppl"], "news": news["ppl"],
            "wall": wall, "compress": wall - stages.get("eval", 0.0), "rss": rss,
            "stages": {k: stages[k] for k in STAGES if k in stages}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--baseline", default="gptq3g64")
    p.add_argument("--jsonl", type=Path, default=None, help="also write the rows here")
    args = p.parse_args()
    ids = sorted(d.name for d in args.out.iterdir()
                 if d.is_dir() and (args.out / f"{d.name}.time").exists())
    rows = {r: row(args.out, r) for r in ids}
    base = rows[args.baseline]
    if args.jsonl:
        args.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows.values()))
    print("| row | bits/weight | builtin ppl | news ppl | compress s (wall − eval) | × "
          f"{args.baseline} | wall s | × | peak RSS GiB | stages (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows.values():
        stages = ", ".join(f"{k} {v:.0f}" for k, v in r["stages"].items())
        print(f"| {r['id']} | {r['bits']:.3f} | {r['builtin']:.2f} | {r['news']:.2f} | "
              f"{r['compress']:.0f} | {r['compress'] / base['compress']:.2f} | {r['wall']:.0f} | "
              f"{r['wall'] / base['wall']:.2f} | {r['rss']:.2f} | {stages} |")


if __name__ == "__main__":
    main()
