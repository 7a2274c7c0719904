#!/usr/bin/env python
"""Benchmark every declared (method stages, budget) row on one model and regenerate BENCHMARKS.md.

    python scripts/bench.py --matrix scripts/bench_matrix.yaml --out benchmarks/ [--only ID ...]
                            [--device cpu|cuda] [--threads N] [--report-only]

Each row runs ``compressor.api.compress`` in a fresh child process (``--worker``), so its peak
resident memory is its own and a crash in one row does not lose the others; ``--in-process``
runs rows in this process instead (fast, but peak memory is then cumulative). Results merge
into ``<out>/results.json`` by row id, so rows can be re-run one at a time, and the markdown and
plots are regenerated from that JSON after every run (``--report-only`` does only that).
Compressed outputs go to ``--work`` (default bench_out/bench, git-ignored) and stay there for
``scripts/bench_inference.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    ROOT,
    dense_command,
    grad_cache_file,
    library_versions,
    load_matrix,
    load_results,
    machine_facts,
    merge_row,
    peak_rss_bytes,
    recipe_dict,
    rel,
    row_by_id,
    svdc_command,
)


def result_key(rid: str, device: str) -> str:
    """CPU rows keep their id; rows run elsewhere are stored beside them as ``id@device``."""
    return rid if device == "cpu" else f"{rid}@{device}"


# ----------------------------------------------------------------------------- one row

def _module_summary(modules: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-kind means of the calibration output error and compress seconds (the full per-module
    table stays in the row's own report.json)."""
    by_kind: dict[str, dict[str, list[float]]] = {}
    for m in modules:
        k = by_kind.setdefault(m["kind"], {"out": [], "w": [], "s": []})
        if m.get("output_rel_err") is not None:
            k["out"].append(m["output_rel_err"])
        k["w"].append(m["weight_rel_err"])
        k["s"].append(m["seconds"])
    mean = lambda v: sum(v) / len(v) if v else None  # noqa: E731
    out = {"n_modules": len(modules),
           "mean_output_rel_err": mean([m["output_rel_err"] for m in modules if m.get("output_rel_err") is not None]),
           "mean_weight_rel_err": mean([m["weight_rel_err"] for m in modules]),
           "by_kind": {k: {"output_rel_err": mean(v["out"]), "weight_rel_err": mean(v["w"]),
                           "seconds": sum(v["s"])} for k, v in by_kind.items()}}
    welore = [m["info"].get("welore") for m in modules if "welore" in m.get("info", {})]
    if welore:
        out["welore_dense_kept"] = sum(1 for w in welore if w == "N-LRC")
    return out


def run_dense(matrix: dict[str, Any], row: dict[str, Any], device: str) -> dict[str, Any]:
    from compressor.accounting import model_footprint
    from compressor.evaluate import evaluate
    from compressor.models import load_model, resolve_device
    ev = {**matrix["eval"], **(row.get("eval") or {})}
    dev = resolve_device(device)
    t = time.perf_counter()
    model, tok, info = load_model(matrix["model"], dtype=matrix["dtype"], device=str(dev))
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    res = evaluate(model, tok, ev["dataset"], ev["seqlen"], max_windows=ev.get("max_windows"), device=str(dev))
    t_eval = time.perf_counter() - t
    params, nbytes = model_footprint(model)
    mx = {**matrix, "eval": ev}
    return {"ppl": res["ppl"], "eval": res, "stage_seconds": {"load": t_load, "eval": t_eval},
            "totals": {"model": {"params_before": params, "params_after": params, "bytes_before": nbytes,
                                 "bytes_after": nbytes, "params_kept": 1.0, "bytes_kept": 1.0,
                                 "bits_per_weight": 8 * nbytes / params}},
            "command": dense_command(mx, device), "model_info": {k: str(v) for k, v in vars(info).items()}}


def run_compressed(matrix: dict[str, Any], row: dict[str, Any], device: str, work: Path,
                   out_dir: Path) -> dict[str, Any]:
    from compressor.api import compress
    from compressor.core.gradients import GRAD_STATS
    from compressor.core.stages import Stage, stage_needs
    from compressor.recipe import dump_recipe, parse_recipe
    output = work / result_key(row["id"], device).replace("@", "-at-").replace(":", "")
    recipe = parse_recipe(recipe_dict(matrix, row, output, device, None), f"row {row['id']}")
    needs = stage_needs([Stage.of(cfg) for cfg in recipe.stages])
    grad = set(needs & GRAD_STATS)
    fisher = grad_cache_file(work, grad, matrix) if grad else None
    grad_cached = bool(fisher and fisher.is_file())
    if fisher is not None:
        recipe.gradients.fisher_file = str(fisher)
    cmd = svdc_command(matrix, row, [c.model_dump(mode="json") for c in recipe.stages], rel(output), device, rel(fisher) if fisher else None)
    if cmd.startswith("svdc run "):
        rdir = out_dir / "recipes"
        rdir.mkdir(parents=True, exist_ok=True)
        r2 = recipe.model_copy(update={"output": rel(output)})
        (rdir / f"{row['id']}.yaml").write_text(dump_recipe(r2))
    # Compress without evaluation, read the peak memory, then evaluate the in-memory model as
    # the api would: the compress-only peak is what the peer comparison needs.
    ev_cfg = recipe.eval
    result = compress(recipe.model_copy(update={"eval": None}), force=True, command=cmd, keep_model=True)
    rss_compress = peak_rss_bytes()
    ev = _evaluate(result.model, output, ev_cfg, recipe.calibration.seqlen, device)
    rep = result.report
    stage_seconds = {**rep["stage_seconds"], "eval": ev["elapsed_s"]}
    return {"ppl": ev.get("ppl"), "eval": ev, "stage_seconds": stage_seconds, "peak_rss_compress_bytes": rss_compress,
            "totals": rep["totals"], "peak_memory_api": rep["peak_memory"], "command": cmd,
            "recipe_stages": recipe.stages, "calibration": rep["calibration"],
            "gradients": {"stats": sorted(grad), "file": rel(fisher) if fisher else None,
                          "loaded_from_cache": grad_cached, "info": rep.get("gradients")},
            "modules": _module_summary(rep["modules"]), "output_dir": rel(output)}


def _evaluate(model, output: Path, ev_cfg, calib_seqlen: int, device: str) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from compressor.evaluate import evaluate
    from compressor.models import resolve_device
    dev = resolve_device(device)
    model.to(dev)
    tok = AutoTokenizer.from_pretrained(output)
    res = evaluate(model, tok, ev_cfg.datasets[0], ev_cfg.seqlen or calib_seqlen,
                   max_windows=ev_cfg.max_windows, device=str(dev))
    model.to("cpu")
    return res


def run_row(matrix: dict[str, Any], rid: str, device: str, work: Path, out_dir: Path,
            include_skipped: bool = False) -> dict[str, Any]:
    """One row, never raising: a failure is recorded with its error line; a row the matrix marks
    `skip_on_cpu: reason` is recorded as skipped (with the reason) on a CPU."""
    row = row_by_id(matrix, rid)
    # a row may override the calibration (a diagnostic row, e.g. more calibration tokens)
    matrix = {**matrix, "calibration": {**matrix["calibration"], **(row.get("calibration") or {})}}
    base = {"id": rid, "key": result_key(rid, device), "label": row.get("label", rid),
            "family": row.get("family", "lowrank"), "stages": row.get("stages", []),
            "budget": row.get("budget"), "machine": machine_facts(device), "versions": library_versions(),
            "calibration_declared": matrix["calibration"],
            "eval_declared": {**matrix["eval"], **(row.get("eval") or {})},
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    t = time.perf_counter()
    if device == "cpu" and row.get("skip_on_cpu") and not include_skipped:
        return {**base, "status": "skipped", "error": row["skip_on_cpu"], "wall_seconds": 0.0}
    try:
        if row.get("family") == "dense":
            body = run_dense(matrix, row, device)
        else:
            body = run_compressed(matrix, row, device, work, out_dir)
        status, err = "ok", None
    except Exception as e:  # noqa: BLE001 - the table says which row failed and why
        body, status = {}, "error"
        err = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        traceback.print_exc()
    body.update(base)
    body["status"], body["error"] = status, err
    body["wall_seconds"] = time.perf_counter() - t
    body["peak_rss_bytes"] = peak_rss_bytes()
    return body


# ----------------------------------------------------------------------------- driver

def _child(args: argparse.Namespace, rid: str, log_dir: Path) -> dict[str, Any]:
    tmp = log_dir / f"{rid}.row.json"
    tmp.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--matrix", str(args.matrix), "--out", str(args.out),
           "--device", args.device, "--work", str(args.work), "--worker", rid, "--worker-json", str(tmp)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.include_skipped:
        cmd += ["--include-skipped"]
    t = time.perf_counter()
    with open(log_dir / f"{rid}.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if tmp.is_file():
        row = json.loads(tmp.read_text())
        row["process_seconds"] = time.perf_counter() - t
        tmp.unlink()
        return row
    tail = (log_dir / f"{rid}.log").read_text()[-400:]
    return {"id": rid, "key": result_key(rid, args.device), "status": "error",
            "error": f"worker exited {proc.returncode} without a result: {tail.strip().splitlines()[-1] if tail.strip() else ''}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--matrix", default=str(ROOT / "scripts" / "bench_matrix.yaml"))
    p.add_argument("--out", default=str(ROOT / "benchmarks"), help="results.json and plots go here")
    p.add_argument("--md", default=None, help="markdown path (default: BENCHMARKS.md beside --out)")
    p.add_argument("--only", nargs="*", default=None, help="row ids to (re)run")
    p.add_argument("--skip-done", action="store_true", help="skip rows already ok in results.json")
    p.add_argument("--device", default=None, help="cpu | cuda (default: the matrix's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per row (default: torch's)")
    p.add_argument("--work", default=str(ROOT / "bench_out" / "bench"), help="compressed outputs, logs")
    p.add_argument("--in-process", action="store_true", help="no child processes (peak RSS cumulative)")
    p.add_argument("--report-only", action="store_true", help="only regenerate the markdown and plots")
    p.add_argument("--include-skipped", action="store_true", help="also run rows marked skip_on_cpu")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    matrix = load_matrix(args.matrix)
    args.device = args.device or matrix["device"]
    args.work, args.out = Path(args.work), Path(args.out)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.worker:
        import logging
        logging.basicConfig(level=logging.WARNING)
        row = run_row(matrix, args.worker, args.device, args.work, args.out, args.include_skipped)
        Path(args.worker_json).write_text(json.dumps(row, default=str))
        return 0

    results_path = args.out / "results.json"
    if not args.report_only:
        ids = args.only or [r["id"] for r in matrix["rows"]]
        for rid in ids:
            row_by_id(matrix, rid)
        done = load_results(results_path)["rows"]
        log_dir = args.work / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        for rid in ids:
            key = result_key(rid, args.device)
            if args.skip_done and done.get(key, {}).get("status") == "ok":
                continue
            print(f"[bench] {key} ...", flush=True)
            row = (run_row(matrix, rid, args.device, args.work, args.out, args.include_skipped) if args.in_process
                   else _child(args, rid, log_dir))
            row["in_process"] = bool(args.in_process)
            merge_row(results_path, row)
            ppl = row.get("ppl")
            print(f"[bench] {key}: {row['status']} ppl={ppl if ppl is None else round(ppl, 3)} "
                  f"wall={row.get('wall_seconds', 0):.0f}s {row.get('error') or ''}", flush=True)
    from bench_report import write_markdown
    md = Path(args.md) if args.md else args.out.resolve().parent / "BENCHMARKS.md"
    write_markdown(matrix, load_results(results_path), args.out, md, rel(Path(args.matrix)))
    print(f"[bench] wrote {md} and {results_path}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
