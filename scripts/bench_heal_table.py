#!/usr/bin/env python
"""Markdown rows for BENCHMARKS.md (Heal) from the reports scripts/bench_heal.sh wrote."""

from __future__ import annotations

import json
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench_out/heal")
print("| row | bits/weight | params kept | ppl without heal | ppl with heal | heal loss first→last 5 | "
      "teacher s | eval-before s | heal s | s/step | rest of the run s |")
print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
for rep_path in sorted(out.glob("*/report.json")):
    r = json.loads(rep_path.read_text())
    if not r.get("heal"):          # a comparison run without heal in the same folder
        continue
    h, t, s = r["heal"], r["totals"]["targets"], r["stage_seconds"]
    before, after = h["eval_before"][0]["ppl"], r["eval"][0]["ppl"]
    L = h["losses"]
    rest = sum(v for k, v in s.items() if not k.startswith(("heal", "eval_before", "layers.")))
    print(f"| {rep_path.parent.name} | {t['bits_per_weight']:.3f} | {t['params_kept']:.3f} | "
          f"{before:.2f} | {after:.2f} | {sum(L[:5]) / 5:.3f} → {sum(L[-5:]) / 5:.3f} | "
          f"{s.get('heal_prepare', 0):.0f} | {s.get('eval_before_heal', 0):.0f} | {s['heal']:.0f} | "
          f"{s['heal'] / max(1, h['steps']):.1f} | {rest:.0f} |")
