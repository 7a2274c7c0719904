"""Evaluation inside a compress run: perplexity (and lm-eval tasks) of the in-memory model, and
the `expect:` checks a recipe's CI gate reads."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from compressor.progress import ProgressSink
from compressor.recipe import Recipe


def eval_split(recipe: Recipe, dataset: str) -> str | None:
    """The split a compress-time evaluation scores: the recipe's, else a local file's held-out
    test share when it is also the calibration file (no document scored was calibrated on),
    else the source's default (a local file whole, a named source's test split)."""
    from compressor.data import is_local_source
    ev = recipe.eval
    if ev is not None and ev.split is not None:
        return ev.split
    if is_local_source(dataset) and is_local_source(recipe.calibration.dataset):
        same = Path(dataset).expanduser().resolve() == Path(recipe.calibration.dataset).expanduser().resolve()
        return "test" if same else "all"
    return None


def evaluate_all(model, tokenizer, recipe: Recipe, calib_seqlen: int, device, progress,
                 label: str = "") -> dict[str, Any]:
    """Perplexity on every eval dataset and, when the recipe names tasks, the lm-eval tasks:
    ``{"perplexity": [...], "tasks": {...} | None}``."""
    from compressor.checkpoint.stream_load import streamed_layers
    from compressor.evaluate import evaluate

    ev = recipe.eval
    assert ev is not None
    streamed = streamed_layers(model) is not None   # placed when loaded; its layers stream
    if not streamed:
        model.to(device)
    out = []
    try:
        for ds in ev.datasets:
            res = evaluate(model, tokenizer, ds, ev.seqlen or calib_seqlen, max_windows=ev.max_windows,
                           device=str(device), split=eval_split(recipe, ds),
                           progress=_progress_fn(progress, f"{label}eval {ds}"))
            if not math.isfinite(res["ppl"]):
                raise FloatingPointError(f"perplexity on {ds} is not finite")
            out.append(res)
        tasks = None
        if ev.tasks:
            from compressor.tasks import run_tasks
            tasks = run_tasks(model, tokenizer, list(ev.tasks), limit=ev.task_limit,
                              batch_size=ev.task_batch_size, seed=recipe.calibration.seed)
    finally:
        if not streamed:
            model.to("cpu")
    return {"perplexity": out, "tasks": tasks}


def _progress_fn(progress: ProgressSink, stage: str):
    state = {"started": False}

    def fn(i: int, n: int) -> None:
        if not state["started"]:
            progress.start(stage, n, "window")
            state["started"] = True
        progress.advance(stage, 1)
        if i + 1 >= n:
            progress.finish(stage)
    return fn


def metrics_of(report: dict[str, Any]) -> dict[str, float]:
    """Flat metric names that `expect:` blocks may name."""
    m: dict[str, float] = {}
    t = report.get("totals", {})
    if t:
        m["bits_per_weight"] = t["targets"]["bits_per_weight"]
        m["params_kept"] = t["targets"]["params_kept"]
        m["bytes"] = float(t["model"]["bytes_after"])
        m["target_bytes"] = float(t["targets"]["bytes_after"])
    for e in report.get("eval") or []:
        m[f"ppl.{e['dataset']}"] = e["ppl"]
    for row in (report.get("tasks") or {}).get("tasks", []):
        for k, v in row["metrics"].items():
            m[f"task.{row['task']}.{k}"] = v
    errs = [r["output_rel_err"] for r in report.get("modules", []) if r["output_rel_err"] is not None]
    if errs:
        m["mean_output_rel_err"] = sum(errs) / len(errs)
    return m


def check_expectations(recipe: Recipe, report: dict[str, Any]) -> list[dict[str, Any]]:
    m = metrics_of(report)
    out = []
    for name, exp in recipe.expect.items():
        got = m.get(name)
        ok = got is not None and abs(got - exp.value) <= exp.tol
        out.append({"metric": name, "value": exp.value, "tol": exp.tol, "got": got, "ok": ok})
    return out
