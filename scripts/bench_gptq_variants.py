#!/usr/bin/env python
"""GPTQ variants, one benchmark row each, on the benchmark matrix's calibration windows.

    python scripts/bench_gptq_variants.py --variant static --bits 3 --group-size 64 --threads 1
    python scripts/bench_gptq_variants.py --variant rtn --model gemma3-270m --bits 4 --group-size 128

Every row: compress SmolLM2 (or --model) with one GPTQ configuration (the variant's options
on top of the method's defaults), then two perplexities of the same compressed model:

* ``sel_ppl``: calibration side, used to choose defaults — 8 windows of 512 tokens drawn
  with seed 1 from the *calibration* split (the calibration set itself is seed 0);
* ``ppl``: held-out, reported only — the matrix's eval protocol (builtin test split, the
  first 16 windows of 512 tokens), never used to pick anything.

Times are the pipeline's own stage timers (calibrate / compress / propagate; load, write
and evaluation excluded), peak RSS is this process's after compression (before evaluation).
Rows merge into benchmarks/gptq_variants.json by id (variant@model-bits-group).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, load_matrix, machine_facts, peak_rss_bytes  # noqa: E402

# name -> (method, extra stage options). GPTQ options not named keep the method's defaults,
# so "default" is whatever compressor/methods/gptq.py ships; the paper/peer rows pin theirs.
PAPER = {"static_groups": False, "act_order": False, "grid": "exact", "mse_grid": 0,
         "mse_weighted": False, "percdamp": 0.01, "sym": False}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "rtn": ("rtn", {}),
    "default": ("gptq", {}),
    # the paper's grid-at-group-start, computed on the exact current weights (svdc before)
    "paper-exact": ("gptq", dict(PAPER)),
    # grid at group start read from the lazily-updated W, as IST-DASLab/gptq does
    "paper-ref": ("gptq", {**PAPER, "grid": "block-lazy"}),
    # llm-compressor 0.14 defaults as run by the peer script: static min-max grid, no act-order
    "static": ("gptq", {**PAPER, "static_groups": True}),
    # llm-compressor's own default: actorder "static" (its default when unset)
    "static-actorder": ("gptq", {**PAPER, "static_groups": True, "act_order": True}),
    "exact-actorder": ("gptq", {**PAPER, "act_order": True}),
    "sym": ("gptq", {**PAPER, "sym": True}),
    "static-sym": ("gptq", {**PAPER, "static_groups": True, "sym": True}),
    "damp0.1": ("gptq", {**PAPER, "percdamp": 0.1}),
    "damp0.001": ("gptq", {**PAPER, "percdamp": 0.001}),
    # beyond the peer: act-order + a Hessian-diagonal-weighted MSE grid search, range shrunk by
    # p = 1, 0.98, ..., 0.82 (10 candidates)
    "actorder-msew": ("gptq", {**PAPER, "act_order": True, "mse_grid": 50, "mse_maxshrink": 0.2,
                               "mse_weighted": True}),
    "mse": ("gptq", {**PAPER, "mse_grid": 100}),
    "static-mse": ("gptq", {**PAPER, "static_groups": True, "mse_grid": 100}),
    "static-actorder-mse": ("gptq", {**PAPER, "static_groups": True, "act_order": True, "mse_grid": 100}),
    "exact-actorder-mse": ("gptq", {**PAPER, "act_order": True, "mse_grid": 100}),
}


def _cpu_seconds() -> float:
    """user + system CPU time of this process: on a shared, overloaded machine it measures
    the work done, where wall time mostly measures the neighbours."""
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    p.add_argument("--matrix", default=str(ROOT / "scripts" / "bench_matrix.yaml"))
    p.add_argument("--model", default=None, help="model alias (default: the matrix's)")
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--set", nargs="*", default=[], help="extra stage options key=json_value")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-heldout", action="store_true", help="skip the held-out evaluation")
    p.add_argument("--no-sel", action="store_true", help="skip the calibration-side perplexity")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "gptq_variants.json"))
    p.add_argument("--work", default=str(ROOT / "bench_out" / "gptq_variants"))
    a = p.parse_args()

    import torch
    torch.set_num_threads(a.threads)
    from compressor.api import compress
    from compressor.data import calibration_windows
    from compressor.evaluate import perplexity
    from compressor.recipe import parse_recipe

    matrix = load_matrix(a.matrix)
    model = a.model or matrix["model"]
    method, opts = VARIANTS[a.variant]
    stage = {"method": method, "bits": a.bits, "group_size": a.group_size, **opts}
    for kv in a.set:
        k, v = kv.split("=", 1)
        stage[k] = json.loads(v)
    rid = f"{a.variant}{'+' + '+'.join(a.set) if a.set else ''}@{model}-w{a.bits}g{a.group_size}"
    out_dir = Path(a.work) / rid.replace("/", "_")
    ev = matrix["eval"]
    recipe = {"model": model, "device": "cpu", "dtype": matrix["dtype"],
              "calibration": dict(matrix["calibration"]), "stages": [stage], "output": str(out_dir),
              "eval": None}
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load1 = os.getloadavg()[0]
    cpu0 = _cpu_seconds()
    t = time.perf_counter()
    res = compress(parse_recipe(recipe, rid), force=True, keep_model=True)
    wall = time.perf_counter() - t
    rep = res.report
    peak = peak_rss_bytes()              # compression only: evaluation runs after this
    cpu = _cpu_seconds() - cpu0          # load + compress + write, this process's CPU time
    st = rep["stage_seconds"]
    compress_s = sum(v for k, v in st.items() if k in ("data", "gradients", "plan", "layers"))
    # calibration-side selection measure (never the test split)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(out_dir))
    cal = matrix["calibration"]
    sel = calibration_windows(tok, cal["dataset"], 8, cal["seqlen"], seed=1)
    from compressor.parts.base import materialized
    with materialized(res.model):        # decode the packed weights once, not per window
        t = time.perf_counter()
        sel_ppl = None if a.no_sel else perplexity(res.model, sel)["ppl"]
        sel_s = time.perf_counter() - t
        held = None
        if not a.no_heldout:             # reported only, never used to choose
            from compressor.evaluate import evaluate
            held = evaluate(res.model, tok, ev["dataset"], ev["seqlen"],
                            max_windows=ev.get("max_windows"))
    errs = [m["output_rel_err"] for m in rep["modules"] if m["output_rel_err"] is not None]
    row = {"id": rid, "variant": a.variant, "model": model, "stage": stage, "started_at": started,
           "loadavg_1m_at_start": load1, "threads": a.threads,
           "compress_seconds": compress_s, "stage_seconds": st,
           "cpu_seconds_load_compress_write": cpu, "loadavg_1m_after_compress": os.getloadavg()[0],
           "peak_rss_bytes": peak,
           "bits_per_weight": rep["totals"]["targets"]["bits_per_weight"],
           "mean_output_rel_err": sum(errs) / max(len(errs), 1),
           "sel_ppl": sel_ppl, "sel_windows": {"split": "calib", "seed": 1, "n": 8, "seqlen": cal["seqlen"]},
           "sel_seconds": sel_s, "wall_seconds": wall,
           "ppl": None if held is None else held["ppl"],
           "eval": None if held is None else {k: held.get(k) for k in
                                               ("n_windows", "total_windows", "partial", "scored_tokens", "seqlen", "label")},
           "command": "python scripts/bench_gptq_variants.py " + " ".join(sys.argv[1:]),
           "machine": machine_facts("cpu")}
    path = Path(a.out)
    data = json.loads(path.read_text()) if path.is_file() else {"rows": {}}
    data["rows"][rid] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)
    print(json.dumps({k: row[k] for k in ("id", "sel_ppl", "ppl", "compress_seconds", "mean_output_rel_err")}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
