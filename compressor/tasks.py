"""Zero-shot tasks with lm-evaluation-harness, run on the model svdc holds in memory.

The model (dense, or rebuilt with its compressed modules) is handed to lm-eval as
``HFLM(pretrained=model, tokenizer=tokenizer)``: nothing is exported first, so the accuracy
is the accuracy of exactly what ``svdc eval`` perplexity scores.

A task is an lm-eval task name (``arc_easy``, ``hellaswag``, ...) or a path to a task YAML.
Relative ``data_files`` in a local YAML are taken relative to the YAML's folder when the file
is there (lm-eval itself resolves them against the working directory).

lm-eval is an optional dependency: ``pip install 'svdc[eval]'`` (lm-eval >= 0.4.13, < 0.5:
its task index and YAML loader are used as they are in that series).
"""

from __future__ import annotations

import difflib
import functools
import logging
import time
from pathlib import Path
from typing import Any

from compressor.errors import UserError

log = logging.getLogger("svdc")

EXTRA_HINT = "pip install 'svdc[eval]'"


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise UserError(f"--tasks needs lm-evaluation-harness, which is not installed: "
                        f"{EXTRA_HINT}") from None
    return lm_eval, HFLM


def _is_yaml_path(spec: str) -> bool:
    return spec.lower().endswith((".yaml", ".yml"))


def _load_yaml(path: Path) -> dict[str, Any]:
    """The task config with lm-eval's own loader (``include:`` merged, ``!function`` resolved
    relative to the YAML), as lm-eval reads a YAML path itself."""
    from lm_eval.tasks._yaml_loader import load_yaml
    return load_yaml(path, resolve_func=True)


def _absolute_data_files(value: Any, base: Path) -> Any:
    if isinstance(value, str):
        p = Path(value).expanduser()
        return str((base / p).resolve()) if not p.is_absolute() and (base / p).exists() else value
    if isinstance(value, list):
        return [_absolute_data_files(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _absolute_data_files(v, base) for k, v in value.items()}
    return value


def task_spec(spec: str) -> tuple[str, str | dict[str, Any]]:
    """(name, what lm-eval loads) for one ``--tasks`` entry: a registered name stays a name;
    a YAML path becomes its config, with relative data files found beside the YAML."""
    if not _is_yaml_path(spec):
        return spec, spec
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"task YAML {spec!r} not found: check the path.")
    try:
        cfg = _load_yaml(path.resolve())
    except Exception as e:  # noqa: BLE001 - YAML errors, bad !function, include cycles
        raise UserError(f"cannot read task YAML {spec} ({type(e).__name__}: "
                        f"{_first_line(e)}).") from None
    if not isinstance(cfg, dict) or not cfg.get("task"):
        raise UserError(f"task YAML {spec} has no `task:` name (a single task is expected, "
                        f"not a group).")
    kwargs = cfg.get("dataset_kwargs")
    if isinstance(kwargs, dict) and "data_files" in kwargs:
        cfg["dataset_kwargs"] = {**kwargs, "data_files": _absolute_data_files(
            kwargs["data_files"], path.resolve().parent)}
    return str(cfg["task"]), cfg


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@functools.lru_cache(maxsize=2)
def task_manager(include_defaults: bool):
    """lm-eval's task index, built once per process (the built-in index takes seconds to a
    minute: it reads every task YAML lm-eval ships)."""
    from lm_eval.tasks import TaskManager
    return TaskManager(include_defaults=include_defaults)


ANY = None   # a task whose result rows or metric names are known only once it runs


def check_tasks(specs: list[str]) -> dict[str, set[str] | None]:
    """Refuse, before any model loads, a missing lm-eval, an unreadable task YAML or a task
    name lm-eval does not know (with a did-you-mean); return, per result row the tasks will
    report, the metric labels it will hold (``ANY`` when not known beforehand: a group, a
    Python task, a metric given as a function). A tag stands for its member tasks.

    Cost: lm-eval's task index, built once per process and reused by run_tasks: 6 s on
    this 2-core CPU (it reads every YAML lm-eval ships); YAML-only task lists skip it."""
    _lm_eval()
    named = [task_spec(t) for t in specs]
    rows: dict[str, set[str] | None] = {}
    tm = task_manager(True) if any(isinstance(spec, str) for _, spec in named) else None
    for name, spec in named:
        if not isinstance(spec, str):
            rows[name] = metric_labels(spec)
            continue
        if name not in tm.all_tasks:
            raise _task_error(tm, name, spec, KeyError(name))
        entry = tm.task_index.get(name)
        kind = getattr(getattr(entry, "kind", None), "name", "")
        if kind == "TAG":
            for member in sorted(entry.tags):
                member_entry = tm.task_index.get(member)
                rows[member] = (metric_labels(member_entry.cfg)
                                if getattr(member_entry, "cfg", None) else ANY)
        elif kind == "TASK" and entry.cfg:
            rows[name] = metric_labels(entry.cfg)
        else:   # a group reports itself and its subtasks; a Python task its own metrics
            rows[name] = ANY
            rows[GROUP_MEMBERS] = ANY
    return rows


GROUP_MEMBERS = "*"   # a key of check_tasks' answer: any subtask of a requested group


def metric_labels(cfg: dict[str, Any]) -> set[str] | None:
    """The metric labels a task's result row holds, as _summarize names them ("acc", or
    "exact_match,strict-match" under a filter); ANY when a metric is a function or the
    task computes its own (process_results)."""
    if cfg.get("process_results") is not None:
        return ANY
    metrics = cfg.get("metric_list")
    if metrics:
        names = [m.get("metric") if isinstance(m, dict) else None for m in metrics]
    else:   # lm-eval's defaults for the output type (what it computes without a list)
        from lm_eval.api.registry import DEFAULT_METRIC_REGISTRY
        names = list(DEFAULT_METRIC_REGISTRY.get(cfg.get("output_type"), []))
    if not names or not all(isinstance(n, str) for n in names):
        return ANY
    filters = [f.get("name") if isinstance(f, dict) else None
               for f in cfg.get("filter_list") or []] or ["none"]
    if not all(isinstance(f, str) for f in filters):
        return ANY
    return {n if f == "none" else f"{n},{f}" for n in names for f in filters}


def _build(tm, name: str, spec):
    """The Task (or Group, or a tag's tasks) for one spec, its dataset loaded. One task at a
    time, so a failure names its task."""
    loaded = tm.load([spec])
    if name in loaded["groups"]:
        return [loaded["groups"][name]]
    if name in loaded["tasks"]:
        return [loaded["tasks"][name]]
    return list(loaded["tasks"].values())          # a tag: its member tasks


def _task_error(tm, name: str, spec, e: BaseException) -> UserError:
    """The one-line reason a task cannot be built (unknown name, unreachable dataset)."""
    if isinstance(spec, str) and name not in getattr(tm, "all_tasks", [name]):
        near = difflib.get_close_matches(name, tm.all_tasks, n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        return UserError(f"unknown lm-eval task {name!r}{hint}: give an lm-eval task name "
                         f"(`lm-eval ls tasks`) or a path to a task YAML.")
    text = f"{type(e).__name__}: {_first_line(e)}"
    offline = any(w in text.lower() for w in ("connect", "offline", "resolve", "hub", "network",
                                              "couldn't find", "timed out", "max retries"))
    if offline:
        path = spec.get("dataset_path") if isinstance(spec, dict) else None
        return UserError(f"task {name!r} cannot fetch its dataset{f' {path}' if path else ''} "
                         f"from the Hugging Face Hub ({text}): run where the Hub is reachable "
                         f"(once; it is cached), or use a local task YAML (dataset_path: json).")
    return UserError(f"task {name!r} cannot be loaded ({text}).")


def run_tasks(model, tokenizer, tasks: list[str], *, limit: int | None = None,
              batch_size: int = 8, num_fewshot: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Run lm-eval tasks on ``model`` as it is (already on its device); one result dict.

    ``limit`` caps the examples per task and labels the result partial. Raises UserError
    (one line) for a missing lm-eval, an unknown task, or a dataset that cannot be fetched.
    """
    if not tasks:
        raise UserError("no tasks given: pass --tasks NAME[,NAME...] or a task YAML path.")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}.")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}.")
    lm_eval, HFLM = _lm_eval()
    from lm_eval import simple_evaluate

    named = [task_spec(t) for t in tasks]
    sources = {name: t for (name, _), t in zip(named, tasks)}
    # the built-in index is needed for task names only (YAML tasks skip its cost)
    tm = task_manager(any(isinstance(s, str) for _, s in named))
    for name, spec in named:
        if isinstance(spec, str) and name not in tm.all_tasks:
            raise _task_error(tm, name, spec, KeyError(name))
    t0 = time.perf_counter()
    built: list = []
    for name, spec in named:
        try:
            built += _build(tm, name, spec)
        except Exception as e:  # noqa: BLE001 - unreachable Hub, bad YAML fields: one line
            raise _task_error(tm, name, spec, e) from None
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    was_training = model.training
    model.eval()
    try:
        out = simple_evaluate(model=lm, tasks=built, task_manager=tm,
                              limit=limit, num_fewshot=num_fewshot, log_samples=False,
                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed)
    finally:
        model.train(was_training)
    return _summarize(out, sources, limit, batch_size, num_fewshot, time.perf_counter() - t0,
                      getattr(lm_eval, "__version__", "unknown"))


def _summarize(out: dict[str, Any], sources: dict[str, str], limit, batch_size, num_fewshot,
               seconds: float, version: str) -> dict[str, Any]:
    """lm-eval's output reduced to what a report needs: metrics per task, example counts."""
    results = out.get("results", {})
    n_samples = out.get("n-samples", {})
    rows = []
    for task, res in results.items():
        metrics, stderr = {}, {}
        for key, value in res.items():
            if key in ("alias", "sample_len") or not isinstance(value, (int, float)):
                continue
            metric, _, filt = key.partition(",")
            label = metric if filt in ("", "none") else f"{metric},{filt}"
            if metric.endswith("_stderr"):
                stderr[label.replace("_stderr", "")] = float(value)
            else:
                metrics[label] = float(value)
        ns = n_samples.get(task, {})
        total, used = ns.get("original"), ns.get("effective")
        partial = limit is not None and used is not None and total is not None and used < total
        rows.append({"task": task, "metrics": metrics, "stderr": stderr,
                     "n_examples": used, "total_examples": total, "partial": bool(partial),
                     "label": f"partial ({used}/{total} examples)" if partial else "full",
                     "num_fewshot": (out.get("n-shot") or {}).get(task),
                     "version": (out.get("versions") or {}).get(task)})
    return {"tasks": rows, "requested": list(sources), "sources": sources,
            "limit": limit, "batch_size": batch_size, "num_fewshot": num_fewshot,
            "lm_eval_version": version, "elapsed_s": round(seconds, 3),
            "partial": any(r["partial"] for r in rows)}


def headline(row: dict[str, Any]) -> tuple[str, float | None]:
    """The metric a table shows for a task: acc_norm, else acc, else the first one."""
    m = row["metrics"]
    for key in ("acc_norm", "acc", "exact_match", "f1"):
        if key in m:
            return key, m[key]
    return (next(iter(m.items())) if m else ("", None))
