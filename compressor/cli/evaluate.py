"""svdc eval: perplexity and zero-shot tasks of an svdc output or any model MODEL names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from compressor.console import RichProgress, console, is_verbose, quiet_third_party
from compressor.errors import UserError

from .app import app


def _split_tasks(values: list[str]) -> list[str]:
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


@app.command("eval")
def eval_cmd(model: str = typer.Argument(..., help="an svdc output folder, or any MODEL `compress` takes"),
             dataset: list[str] = typer.Option([], "--dataset", "-d",
                                               help="wikitext2 | c4 | builtin | PATH (default builtin, unless only --tasks)"),
             split: Optional[str] = typer.Option(None, "--split",
                                                 help="all | test: a local file whole (default) or its held-out 10%; builtin/wikitext2/c4 always test"),
             seqlen: Optional[int] = typer.Option(None, help="window length (capped by the model's context; default: the one OUT's report was scored at, else 2048)"),
             max_windows: Optional[int] = typer.Option(None, "--max-windows", help="quick partial run"),
             tasks: list[str] = typer.Option([], "--tasks", "-t",
                                             help="lm-eval tasks, comma separated: names (arc_easy, hellaswag, ...) or task YAML paths"),
             limit: Optional[int] = typer.Option(None, "--limit", help="examples per task (quick, labelled partial)"),
             batch_size: int = typer.Option(8, "--batch-size", help="batch size of the task runs"),
             num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", help="few-shot examples (default: the task's own, usually 0)"),
             device: str = typer.Option("auto"),
             dtype: str = typer.Option("auto"),
             as_json: bool = typer.Option(False, "--json", help="print the result as JSON on stdout"),
             no_verify: bool = typer.Option(False, "--no-verify", help="skip the sha256 check of an svdc output's weights"),
             stream: bool = typer.Option(False, "--stream", help="read one decoder layer at a time (models larger than RAM)"),
             trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                                    help="run Python code shipped in the model folder; only for folders you trust")) -> None:
    """Perplexity with the GPTQ protocol (non-overlapping windows, no special tokens) and,
    with --tasks, lm-evaluation-harness tasks run on the model as svdc loaded it."""
    from compressor.evaluate import evaluate
    from compressor.models import resolve_device
    task_list = _split_tasks(tasks)
    if limit is not None and not task_list:
        raise UserError("--limit applies to --tasks; for perplexity use --max-windows.")
    datasets = list(dataset) or ([] if task_list else ["builtin"])
    if task_list:
        from compressor.tasks import check_tasks
        check_tasks(task_list)           # a missing extra or an unknown task: before the load
    dev = resolve_device(device)
    if stream:
        model_obj, tok = load_streamed_any(model, dtype, dev, verify=not no_verify,
                                           trust_remote_code=trust_remote_code)
    else:
        model_obj, tok = load_any(model, dtype, verify=not no_verify, trust_remote_code=trust_remote_code,
                                  device=dev)
        model_obj.to(dev)
    results = []
    if datasets:
        recorded = recorded_eval(model)
        if not seqlen:   # said only when chosen for the user
            seqlen, why = recorded_seqlen(model, recorded)
            console.print(f"seqlen {seqlen} ({why})", highlight=False)
        with RichProgress() as progress:
            for ds in datasets:
                from compressor.run_eval import _progress_fn
                windows = max_windows
                if windows is None and split is None and _same_windows(recorded, ds, seqlen):
                    # the report scored a partial run: the same windows repeat its number
                    windows = int(recorded["n_windows"])
                    console.print(f"{ds}: the first {windows} windows, as in the report (partial);"
                                  f" --max-windows to change", highlight=False)
                results.append(evaluate(model_obj, tok, ds, seqlen, max_windows=windows, device=str(dev),
                                        split=split, progress=_progress_fn(progress, f"eval {ds}")))
    task_res = None
    if task_list:
        from compressor.tasks import run_tasks
        if not is_verbose():
            quiet_third_party()
        if stream:
            console.print("--stream: lm-eval runs the model forward by forward, reading every "
                          "layer from disk once per batch (slow)")
        console.print(f"running {len(task_list)} task(s) with lm-eval"
                      + (f", {limit} examples each (partial)" if limit else "") + " ...")
        task_res = run_tasks(model_obj, tok, task_list, limit=limit, batch_size=batch_size,
                             num_fewshot=num_fewshot)
    if as_json:
        if task_res is None:
            print(json.dumps(results if len(results) > 1 else results[0], indent=1, default=str))
        else:
            print(json.dumps({"model": model, "perplexity": results, "tasks": task_res},
                             indent=1, default=str))
        return
    if results:
        console.print(ppl_table(results, f"perplexity: {model}"))
    if task_res is not None:
        console.print(tasks_table(task_res, f"tasks: {model}"))


def recorded_eval(model: str) -> dict[str, Any] | None:
    """The first perplexity entry of an svdc output's own report (None: no readable one)."""
    try:
        entry = (json.loads((Path(model) / "report.json").read_text()).get("eval") or [])[0]
        int(entry["seqlen"]), int(entry.get("n_windows") or 0)   # a non-dict entry raises too
        return entry
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def recorded_seqlen(model: str, entry: dict[str, Any] | None = None) -> tuple[int, str]:
    """The window length an svdc output's own report scored it at (``entry``: its
    recorded_eval, when already read), so `svdc eval OUT` repeats the compress run's number
    unless told otherwise; else 2048."""
    entry = recorded_eval(model) if entry is None else entry
    if entry is None:
        return 2048, "default; --seqlen to change"
    return int(entry["seqlen"]), f"as in {Path(model) / 'report.json'}; --seqlen to change"


def _same_windows(entry: dict[str, Any] | None, dataset: str, seqlen: int) -> bool:
    """Whether ``entry`` (the report's) scored a partial run of this dataset at this seqlen:
    its window count is then the default, so `svdc eval OUT` repeats the report's number."""
    return (entry is not None and bool(entry.get("partial")) and entry.get("dataset") == dataset
            and int(entry["seqlen"]) == int(seqlen) and entry.get("n_windows") is not None)


def ppl_table(results: list[dict[str, Any]], title: str) -> Table:
    tab = Table(title=title)
    for c in ("dataset", "split", "seqlen", "windows", "ppl", "partial"):
        tab.add_column(c)
    for r in results:
        tab.add_row(r["dataset"], str(r.get("split", "")), str(r["seqlen"]), str(r["n_windows"]), f"{r['ppl']:.3f}",
                    f"yes ({r['n_windows']} of {r.get('total_windows', '?')})" if r.get("partial") else "no")
    return tab


def tasks_table(res: dict[str, Any], title: str) -> Table:
    tab = Table(title=title)
    for c in ("task", "acc", "acc_norm", "examples", "partial"):
        tab.add_column(c)

    def fmt(row, key):
        v = row["metrics"].get(key)
        if v is None:
            return ""
        se = row["stderr"].get(key)
        return f"{v:.4f}" + (f" ± {se:.4f}" if se is not None else "")
    for row in res["tasks"]:
        tab.add_row(row["task"], fmt(row, "acc"), fmt(row, "acc_norm"), str(row["n_examples"]),
                    f"yes ({row['n_examples']} of {row['total_examples']})" if row["partial"] else "no")
    return tab


def output_dtype(folder: str | Path, dtype: str, device: Any):
    """The compute dtype of an svdc output, chosen as for a plain model: an explicit
    --dtype, else ("auto") float32 on the CPU and the stored dtype on CUDA. So `svdc eval`
    on the CPU reproduces the report's perplexity, which was measured in float32."""
    from types import SimpleNamespace

    import torch

    from compressor.models.device import resolve_dtype
    config = json.loads((Path(folder) / "config.json").read_text())
    return resolve_dtype(dtype, SimpleNamespace(**config), torch.device(device))


def load_any(spec: str, dtype: str = "auto", verify: bool = True, trust_remote_code: bool = False,
             device: Any = "cpu"):
    """An svdc output folder (rebuilt with its compressed modules, weights verified, cast to
    ``output_dtype``) or a plain model."""
    from compressor.checkpoint import is_compressed_folder, load_compressed
    if Path(spec).is_dir() and is_compressed_folder(spec):
        from transformers import AutoTokenizer
        return (load_compressed(spec, verify=verify, dtype=output_dtype(spec, dtype, device)),
                AutoTokenizer.from_pretrained(spec, trust_remote_code=False))
    from compressor.models import load_model
    m, tok, _ = load_model(spec, dtype=dtype, device="cpu", trust_remote_code=trust_remote_code,
                           verify=verify)
    return m, tok


def load_streamed_any(spec: str, dtype: str, device: Any, verify: bool = True,
                      trust_remote_code: bool = False):
    """``load_any`` for --stream: the model on the meta device with its decoder layers read
    from disk when used (checkpoint/stream_load.py), placed on ``device``; same dtypes."""
    import torch
    from transformers import AutoTokenizer

    from compressor.checkpoint import is_compressed_folder
    from compressor.checkpoint.stream_load import load_streamed, plain_config
    from compressor.models.device import resolve_dtype
    from compressor.models.resolve import resolve_model
    if Path(spec).is_dir() and is_compressed_folder(spec):
        return (load_streamed(spec, device=device, verify=verify,
                              dtype=output_dtype(spec, dtype, device)),
                AutoTokenizer.from_pretrained(spec, trust_remote_code=False))
    if trust_remote_code:
        raise UserError("--stream builds models from transformers' own classes; a model that "
                        "needs --trust-remote-code cannot stream")
    res = resolve_model(spec)
    if res.gguf_file:
        raise UserError("--stream reads safetensors checkpoints; a .gguf model must be loaded whole")
    # the dtype load_any's whole-model path computes in ("auto": float32, as on the CPU)
    torch_dtype = resolve_dtype(dtype, plain_config(res.path), torch.device("cpu"))
    return (load_streamed(res.path, device=device, dtype=torch_dtype),
            AutoTokenizer.from_pretrained(res.path, trust_remote_code=False))
