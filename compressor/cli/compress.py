"""svdc compress and svdc run: a recipe from flags or YAML, run with progress, summarized."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from compressor.console import RichProgress, console
from compressor.errors import UserError
from compressor.recipe import (
    load_recipe,
    parse_recipe,
    parse_set,
    read_recipe_data,
    route_flags,
    stages_from_flags,
    with_heal,
)

from .app import app


def _command_line() -> str:
    return "svdc " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _print_summary(report: dict[str, Any], output: Path) -> None:
    t = report["totals"]
    tab = Table(title=f"svdc: {output}")
    for c in ("", "bytes before", "bytes after", "bits/weight"):
        tab.add_column(c, justify="right")
    for k in ("targets", "model"):
        b = t[k]
        tab.add_row(k, f"{b['bytes_before'] / 2**20:.1f} MiB", f"{b['bytes_after'] / 2**20:.1f} MiB",
                    f"{b['bits_per_weight']:.3f}")
    console.print(tab)
    split = t["targets"].get("bits_split") or {}
    if split:
        names = {"codes": "codes", "scales": "scales", "lowrank": "low-rank"}
        terms = " + ".join(f"{names.get(k, k)} {v:.3f}" for k, v in split.items())
        console.print(f"bits/weight (targets) {t['targets']['bits_per_weight']:.3f} = {terms}")
    from compressor.core.pipeline import numerics_lines
    for line in numerics_lines(report.get("numerics") or {}):
        console.print(f"numerics {line}  [dim](per module: -v, report.md)[/]")
    before = {e["dataset"]: e["ppl"] for e in ((report.get("heal") or {}).get("eval_before") or [])}
    for e in report.get("eval") or []:
        part = f" (partial: {e['n_windows']} of {e.get('total_windows', '?')} windows)" if e.get("partial") else ""
        dense = f", dense {e['dense_ppl']:.3f} on the same windows" if "dense_ppl" in e else ""
        healed = f" (before heal: {before[e['dataset']]:.3f})" if e["dataset"] in before else ""
        console.print(f"perplexity {e['dataset']} ({e.get('split', '')}): [bold]{e['ppl']:.3f}[/]"
                      f"{dense}{part}{healed}")
    if report.get("tasks"):
        from .evaluate import tasks_table
        console.print(tasks_table(report["tasks"], "tasks (lm-eval)"))
    missed = [e for e in report.get("expect", []) if not e["ok"]]
    for e in report.get("expect", []):
        mark = "[green]✓[/]" if e["ok"] else "[red]✗[/]"
        console.print(f"expect {e['metric']} = {e['value']} ± {e['tol']}: got {e['got']} {mark}")
    console.print(f"wrote {output}/ (report.md, report.json, recipe.yaml)")
    if missed:
        raise typer.Exit(3)


# The stage options that have their own compress flag; every other option is --set key=value
# (`svdc methods X` says which).
STAGE_FLAGS = ("bits", "rank", "ratio", "group_size", "sparsity", "compensation", "lowrank_bits",
               "outlier_frac", "sparse_frac", "atoms_per_column", "allocation")

STREAM_HELP = "read and write one decoder layer at a time (models larger than RAM)"
TRUST_HELP = ("run Python code shipped in the model folder (config auto_map); only for "
              "folders you trust")


def _maybe_launch(nproc: int) -> None:
    """--nproc N > 1 outside torchrun: start N ranks of this same command and exit with theirs."""
    if nproc < 1:
        raise UserError(f"--nproc {nproc}: the number of ranks must be at least 1 (1 runs in "
                        "this process)")
    from compressor.cli.launch import launch, launched_rank
    if nproc > 1 and not launched_rank():
        raise typer.Exit(launch(nproc))


def _run(recipe, force: bool, resume: bool, trust_remote_code: bool = False,
         recipe_file: Path | None = None, stream: bool = False) -> None:
    from compressor.api import compress
    with RichProgress() as progress:
        result = compress(recipe, force=force, resume=resume, progress=progress, command=_command_line(),
                          trust_remote_code=trust_remote_code, recipe_file=recipe_file,
                          stream=stream)
    if not result.report:   # a rank other than 0: rank 0 writes and summarizes
        return
    _print_summary(result.report, result.output)


@app.command()
def compress(
    model: str = typer.Argument(..., help="hub id, alias (smollm2-135m, llama-2-7b, ...), local folder or .gguf"),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="compressor; see `svdc methods`"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="take the stages (and defaults) from a recipe YAML"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="output folder (default out/<model>-<method>)"),
    base: Optional[str] = typer.Option(None, help="base stage for compensation methods (eora): gptq, rtn, prune, svd"),
    bits: Optional[float] = typer.Option(None, help="bits per weight (quantizers) or average budget (lqlora)"),
    target_bits: Optional[float] = typer.Option(None, "--target-bits", help=(
        "a size budget instead of a method: each matrix gets the menu candidate (GPTQ, "
        "+EoRA, GWQ, LQ-LoRA NF, 8-bit-factor SVD, dense) an ILP picks so the written bits "
        "per weight are at most this (the plan stage; `svdc methods plan`)")),
    rank: Optional[int] = typer.Option(None, help="rank (overrides --ratio)"),
    ratio: Optional[float] = typer.Option(None, help="fraction of the target parameters removed (0.2 keeps 80%)"),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="quantization group size (-1: per row)"),
    sparsity: Optional[float] = typer.Option(None, help="pruning sparsity"),
    compensation: Optional[str] = typer.Option(None, help="eora | svd (EoRA's baseline)"),
    lowrank_bits: Optional[int] = typer.Option(None, "--lowrank-bits", help="quantize the low-rank factors"),
    outlier_frac: Optional[float] = typer.Option(None, "--outlier-frac", help="GWQ: fraction of weights kept in 16 bit"),
    sparse_frac: Optional[float] = typer.Option(None, "--sparse-frac", help="LOST: budget share of the sparse channels"),
    atoms_per_column: Optional[int] = typer.Option(None, "--atoms-per-column", help="CoSpaDi: non-zeros per column"),
    allocation: Optional[str] = typer.Option(None, help="uniform | welore rank allocation"),
    set_: list[str] = typer.Option([], "--set", help="any method option as key=value (repeatable)"),
    calib: Optional[str] = typer.Option(None, "--calib", help="wikitext2 | c4 | builtin | PATH | random (token ids, no text)"),
    nsamples: Optional[int] = typer.Option(None, help="calibration windows"),
    seqlen: Optional[int] = typer.Option(None, help="tokens per calibration window"),
    seed: Optional[int] = typer.Option(None, help="seed for sampling and randomized routines"),
    fisher_file: Optional[str] = typer.Option(None, "--fisher-file", help="load/save gradient statistics here"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N"),
    dtype: Optional[str] = typer.Option(None, help="compute dtype: auto | float32 | float16 | bfloat16"),
    storage_dtype: Optional[str] = typer.Option(None, "--storage-dtype",
                                                help="written dtype: auto (the checkpoint's) | float32 | float16 | bfloat16"),
    eval_: list[str] = typer.Option([], "--eval", help="evaluate the result on these datasets"),
    eval_windows: Optional[int] = typer.Option(None, "--eval-windows", help="score only this many windows (partial)"),
    eval_tasks: list[str] = typer.Option([], "--eval-tasks", help="lm-eval tasks run on the result (comma separated names or YAML paths)"),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="examples per task (quick, partial)"),
    eval_dense: bool = typer.Option(False, "--eval-dense", help="also evaluate the uncompressed model on the same windows/tasks"),
    force: bool = typer.Option(False, "--force", help="replace an existing output folder (only an earlier svdc output or an empty folder)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its per-layer checkpoints"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_HELP),
    nproc: int = typer.Option(1, "--nproc", help="data-parallel ranks on this host (as torchrun --nproc-per-node)"),
    stream: bool = typer.Option(False, "--stream", help=STREAM_HELP),
    output_errors: Optional[bool] = typer.Option(None, "--output-errors/--no-output-errors", help=(
        "measure each module's output error on calibration inputs (default: whenever "
        "calibration runs anyway; data-free methods such as RTN then skip every forward pass)")),
    heal_steps: Optional[int] = typer.Option(None, "--heal-steps", help=(
        "after compressing, train the low-rank factors this many steps (appends a heal stage; "
        "`svdc methods heal` lists its options, set them with --set, e.g. --set lr=5e-5)")),
) -> None:
    """Compress MODEL with one method (from flags) or a recipe's stages."""
    _maybe_launch(nproc)
    method, bits = _target_bits(target_bits, method, bits)
    flags = {"bits": bits, "rank": rank, "ratio": ratio, "group_size": group_size,
             "sparsity": sparsity, "compensation": compensation, "lowrank_bits": lowrank_bits,
             "outlier_frac": outlier_frac, "sparse_frac": sparse_frac,
             "atoms_per_column": atoms_per_column, "allocation": allocation}
    assert set(flags) == set(STAGE_FLAGS)
    params = {**flags, **parse_set(set_)}
    if bits is not None and float(bits).is_integer():
        params["bits"] = int(bits)
    data = _stages_data(method, recipe, base, params, heal_steps)
    data["model"] = model
    cal = data.setdefault("calibration", {})
    for k, v in (("dataset", calib), ("nsamples", nsamples), ("seqlen", seqlen), ("seed", seed)):
        if v is not None:
            cal[k] = v
    if fisher_file is not None:
        data.setdefault("gradients", {})["fisher_file"] = fisher_file
    for k, v in (("device", device), ("dtype", dtype), ("storage_dtype", storage_dtype)):
        if v is not None:
            data[k] = v
    if eval_:
        data["eval"] = {**(data.get("eval") or {}), "datasets": list(eval_)}
    if eval_windows is not None:
        data["eval"] = {**(data.get("eval") or {"datasets": ["builtin"]}), "max_windows": eval_windows}
    tasks = [t.strip() for v in eval_tasks for t in v.split(",") if t.strip()]
    for key, value in (("tasks", tasks or None), ("task_limit", eval_limit), ("dense", eval_dense or None)):
        if value is not None:
            data["eval"] = {**(data.get("eval") or {"datasets": ["builtin"]}), key: value}
    if output is None:
        names = "-".join(str(s.get("method")) for s in data["stages"] if isinstance(s, dict))
        output = Path(data.get("output") or Path("out") / f"{Path(model).name}-{names}")
    data["output"] = str(output)
    if output_errors is not None:
        data["output_errors"] = output_errors
    _run(parse_recipe(data, "command line"), force, resume, trust_remote_code, recipe, stream)


def _target_bits(target_bits: float | None, method: str | None, bits: float | None
                 ) -> tuple[str | None, float | None]:
    """--target-bits B is --method plan --bits B, the one way to ask for a size budget."""
    if target_bits is None:
        return method, bits
    if method not in (None, "plan"):
        raise UserError(f"--target-bits chooses the methods itself; drop --method {method} "
                        f"(or pass --method {method} --bits B for that method alone)")
    if bits is not None:
        raise UserError("--target-bits is the budget; drop --bits")
    return "plan", target_bits


def _stages_data(method: str | None, recipe: Path | None, base: str | None,
                 params: dict[str, Any], heal_steps: int | None = None) -> dict[str, Any]:
    """The raw recipe mapping the flags stand for: a recipe file's, or one built from
    --method; either way every stage flag routed by the one router (validated later, once)."""
    if recipe is not None:
        if method is not None:
            raise UserError("pass either --method or --recipe, not both")
        if base is not None:
            raise UserError("--base applies with --method only; in a recipe, write the base "
                            "as its own stage before the compensation stage")
        data = read_recipe_data(recipe)
        stages = data.get("stages")
        if isinstance(stages, list) and stages and all(isinstance(s, dict) for s in stages):
            with_heal(stages, heal_steps)
            route_flags(stages, params, f"any stage of {recipe}")
        return data
    if method is None:
        raise UserError("pass --method (see `svdc methods`) or --recipe")
    return {"stages": stages_from_flags(method, base, params, heal_steps)}


@app.command()
def run(recipe: Path = typer.Argument(..., help="recipe YAML (model, stages, output, eval, expect)"),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="override the recipe's output"),
        device: Optional[str] = typer.Option(None, help="override the recipe's device"),
        force: bool = typer.Option(False, "--force", help="replace an existing output folder"),
        resume: bool = typer.Option(False, "--resume", help="continue an interrupted run"),
        trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_HELP),
        nproc: int = typer.Option(1, "--nproc", help="data-parallel ranks on this host (as torchrun --nproc-per-node)"),
        stream: bool = typer.Option(False, "--stream", help=STREAM_HELP)) -> None:
    """Run a recipe end to end; exit 3 when an `expect` value is missed."""
    _maybe_launch(nproc)
    r = load_recipe(recipe)
    if output is not None:
        r.output = str(output)
    if device is not None:
        r.device = device
    _run(r, force, resume, trust_remote_code, recipe, stream)
