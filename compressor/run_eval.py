"""Evaluation inside a compress run: perplexity (and lm-eval tasks) of the in-memory model, and
the `expect:` checks a recipe's CI gate reads."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from compressor.errors import UserError
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


# The metrics every run reports, read from report["totals"]: name -> (section, key). The
# one list: metrics_of reads it, check_expect_names checks a recipe's `expect:` against it.
TOTALS_METRICS = {
    "bits_per_weight": ("targets", "bits_per_weight"),
    "params_kept": ("targets", "params_kept"),
    "bytes": ("model", "bytes_after"),
    "target_bytes": ("targets", "bytes_after"),
}
OUTPUT_ERROR_METRIC = "mean_output_rel_err"   # measured only when calibration runs
PPL_PREFIX, TASK_PREFIX = "ppl.", "task."


def metrics_of(report: dict[str, Any]) -> dict[str, float]:
    """Flat metric names that `expect:` blocks may name."""
    m: dict[str, float] = {}
    t = report.get("totals", {})
    if t:
        for name, (section, key) in TOTALS_METRICS.items():
            m[name] = float(t[section][key])
    for e in report.get("eval") or []:
        m[f"{PPL_PREFIX}{e['dataset']}"] = e["ppl"]
    for row in (report.get("tasks") or {}).get("tasks", []):
        for k, v in row["metrics"].items():
            m[f"{TASK_PREFIX}{row['task']}.{k}"] = v
    errs = [r["output_rel_err"] for r in report.get("modules", []) if r["output_rel_err"] is not None]
    if errs:
        m[OUTPUT_ERROR_METRIC] = sum(errs) / len(errs)
    return m


def dataset_label(source: str) -> str:
    """The name a dataset's perplexity is reported under (compressor.data's meta["dataset"]):
    a named source in lower case, a local file by its file name."""
    from compressor.data import NAMED_SOURCES
    key = source.strip().lower()
    return key if key in NAMED_SOURCES else Path(source).expanduser().name


def check_expect_names(recipe: Recipe, task_rows: dict[str, set[str] | None] | None,
                       output_errors: bool) -> None:
    """Refuse, before the model loads, an `expect:` metric this run will not report (found
    otherwise only at the end, as "got None"), naming the nearest one it will.

    ``task_rows``: compressor.tasks.check_tasks' answer for the recipe's tasks;
    ``output_errors``: whether the run measures output errors (it calibrates)."""
    if not recipe.expect:
        return
    ev = recipe.eval
    datasets = [dataset_label(d) for d in ev.datasets] if ev else []
    rows = task_rows or {}
    from compressor.tasks import ANY, GROUP_MEMBERS
    valid = [*TOTALS_METRICS, *(f"{PPL_PREFIX}{d}" for d in datasets),
             *(f"{TASK_PREFIX}{t}.{m}" for t, ms in rows.items() if ms for m in sorted(ms)),
             *([OUTPUT_ERROR_METRIC] if output_errors else [])]
    for name in recipe.expect:
        if name in valid:
            continue
        if name.startswith(TASK_PREFIX):
            task, _, metric = name[len(TASK_PREFIX):].rpartition(".")
            if task and metric and (rows.get(task, ()) is ANY
                                    or (task not in rows and rows.get(GROUP_MEMBERS, ()) is ANY)):
                continue      # a group's row or subtask: its metrics are known once it runs
        raise UserError(f"expect: {name!r} is not a metric this run reports"
                        f"{_why_not(name, ev, output_errors, valid)}")


def _why_not(name: str, ev, output_errors: bool, valid: list[str]) -> str:
    import difflib
    near = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    if near:
        return f" (did you mean {near[0]!r}?); it reports {_listed(valid)}"
    if name == OUTPUT_ERROR_METRIC and not output_errors:
        return (": this run is data-free (no calibration) unless the recipe sets "
                "output_errors: true (--output-errors), which measures it")
    if name.startswith(PPL_PREFIX) and not ev:
        return (f": perplexity is scored only with an eval block; add eval: {{datasets: "
                f"[{name[len(PPL_PREFIX):] or 'builtin'}]}} (or --eval)")
    if name.startswith(PPL_PREFIX):
        return (f": {name[len(PPL_PREFIX):]!r} is not among eval.datasets; it reports "
                f"{_listed(valid)}")
    if name.startswith(TASK_PREFIX) and not (ev and ev.tasks):
        return ": task metrics need eval.tasks (or --eval-tasks) naming the task"
    return f"; it reports {_listed(valid)}"


def _listed(valid: list[str], limit: int = 12) -> str:
    more = f" and {len(valid) - limit} more" if len(valid) > limit else ""
    return ", ".join(valid[:limit]) + more


def check_expectations(recipe: Recipe, report: dict[str, Any]) -> list[dict[str, Any]]:
    m = metrics_of(report)
    out = []
    for name, exp in recipe.expect.items():
        got = m.get(name)
        ok = got is not None and abs(got - exp.value) <= exp.tol
        out.append({"metric": name, "value": exp.value, "tol": exp.tol, "got": got, "ok": ok})
    return out
