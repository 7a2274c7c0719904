"""The `svdc` command line: compress, run, eval, export, inspect, methods."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from .console import RichProgress, console, setup_logging
from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Post-training compression of Hugging Face causal LMs.")

_STATE = {"verbose": False}


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="log numerics (damping, floors) as they happen"),
          debug: bool = typer.Option(False, "--debug", help="show tracebacks")) -> None:
    _STATE["verbose"] = verbose or debug
    setup_logging(_STATE["verbose"])


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
    for e in report.get("eval") or []:
        part = f" (partial: {e['n_windows']} windows)" if e.get("partial") else ""
        console.print(f"perplexity {e['dataset']}: [bold]{e['ppl']:.3f}[/]{part}")
    missed = [e for e in report.get("expect", []) if not e["ok"]]
    for e in report.get("expect", []):
        mark = "[green]✓[/]" if e["ok"] else "[red]✗[/]"
        console.print(f"expect {e['metric']} = {e['value']} ± {e['tol']}: got {e['got']} {mark}")
    console.print(f"wrote {output}/ (report.md, report.json, recipe.yaml)")
    if missed:
        raise typer.Exit(3)


def _run(recipe, force: bool, resume: bool) -> None:
    from .api import compress
    with RichProgress() as progress:
        result = compress(recipe, force=force, resume=resume, progress=progress, command=_command_line())
    _print_summary(result.report, result.output)


@app.command()
def compress(
    model: str = typer.Argument(..., help="hub id, alias (smollm2-135m, llama-2-7b, ...), local folder or .gguf"),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="compressor; see `svdc methods`"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="take the stages (and defaults) from a recipe YAML"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="output folder (default out/<model>-<method>)"),
    base: Optional[str] = typer.Option(None, help="base stage for compensation methods (eora): gptq, rtn, prune, svd"),
    bits: Optional[float] = typer.Option(None, help="bits per weight (quantizers) or average budget (lqlora)"),
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
    calib: Optional[str] = typer.Option(None, "--calib", help="wikitext2 | c4 | builtin | PATH"),
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
    force: bool = typer.Option(False, "--force", help="replace an existing output folder"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its per-layer checkpoints"),
) -> None:
    """Compress MODEL with one method (from flags) or a recipe's stages."""
    from .flags import parse_set, stages_from_flags
    from .recipe import load_recipe, parse_recipe

    params = {"bits": bits, "rank": rank, "ratio": ratio, "group_size": group_size, "sparsity": sparsity,
              "compensation": compensation, "lowrank_bits": lowrank_bits, "outlier_frac": outlier_frac,
              "sparse_frac": sparse_frac, "atoms_per_column": atoms_per_column, "allocation": allocation,
              **parse_set(set_)}
    if bits is not None and float(bits).is_integer():
        params["bits"] = int(bits)
    if recipe is not None:
        data = load_recipe(recipe).model_dump(mode="json")
        if method is not None:
            raise UserError("pass either --method or --recipe, not both")
        if base or any(v is not None for v in params.values()):
            stages = data["stages"]
            for key, value in params.items():
                if value is None:
                    continue
                hit = [s for s in stages if key in _fields(s["method"])]
                if not hit:
                    raise UserError(f"--{key.replace('_', '-')} does not apply to any stage of {recipe}")
                hit[-1][key] = value
    else:
        if method is None:
            raise UserError("pass --method (see `svdc methods`) or --recipe")
        data = {"stages": stages_from_flags(method, base, params)}
    data["model"] = model
    cal = data.setdefault("calibration", {})
    for k, v in (("dataset", calib), ("nsamples", nsamples), ("seqlen", seqlen), ("seed", seed)):
        if v is not None:
            cal[k] = v
    if fisher_file is not None:
        data.setdefault("gradients", {})["fisher_file"] = fisher_file
    if device is not None:
        data["device"] = device
    if dtype is not None:
        data["dtype"] = dtype
    if storage_dtype is not None:
        data["storage_dtype"] = storage_dtype
    if eval_:
        data["eval"] = {**(data.get("eval") or {}), "datasets": list(eval_)}
    if eval_windows is not None:
        data["eval"] = {**(data.get("eval") or {"datasets": ["builtin"]}), "max_windows": eval_windows}
    if output is None:
        output = Path(data.get("output") or Path("out") / f"{Path(model).name}-{'-'.join(s['method'] for s in data['stages'])}")
    data["output"] = str(output)
    _run(parse_recipe(data, "command line"), force, resume)


def _fields(method: str) -> set[str]:
    from .methods import get_method
    return set(get_method(method).Config.model_fields)


@app.command()
def run(recipe: Path = typer.Argument(..., help="recipe YAML (model, stages, output, eval, expect)"),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="override the recipe's output"),
        device: Optional[str] = typer.Option(None, help="override the recipe's device"),
        force: bool = typer.Option(False, "--force", help="replace an existing output folder"),
        resume: bool = typer.Option(False, "--resume", help="continue an interrupted run")) -> None:
    """Run a recipe end to end; exit 3 when an `expect` value is missed."""
    from .recipe import load_recipe
    r = load_recipe(recipe)
    if output is not None:
        r.output = str(output)
    if device is not None:
        r.device = device
    _run(r, force, resume)


@app.command("eval")
def eval_cmd(model: str = typer.Argument(..., help="an svdc output folder, or any MODEL `compress` takes"),
             dataset: list[str] = typer.Option(["builtin"], "--dataset", "-d", help="wikitext2 | c4 | builtin | PATH"),
             seqlen: int = typer.Option(2048, help="window length (capped by the model's context)"),
             max_windows: Optional[int] = typer.Option(None, "--max-windows", help="quick partial run"),
             device: str = typer.Option("auto"),
             dtype: str = typer.Option("auto"),
             as_json: bool = typer.Option(False, "--json", help="print the result as JSON on stdout")) -> None:
    """Perplexity with the GPTQ protocol (non-overlapping windows, no special tokens)."""
    from .evaluate import evaluate
    from .models import resolve_device
    dev = resolve_device(device)
    model_obj, tok = load_any(model, dtype)
    model_obj.to(dev)
    results = []
    with RichProgress() as progress:
        for ds in dataset:
            from .api import _progress_fn
            results.append(evaluate(model_obj, tok, ds, seqlen, max_windows=max_windows, device=str(dev),
                                    progress=_progress_fn(progress, f"eval {ds}")))
    if as_json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=1, default=str))
        return
    tab = Table(title=f"perplexity: {model}")
    for c in ("dataset", "split", "seqlen", "windows", "ppl", "partial"):
        tab.add_column(c)
    for r in results:
        tab.add_row(r["dataset"], str(r.get("split", "")), str(r["seqlen"]), str(r["n_windows"]), f"{r['ppl']:.3f}",
                    f"yes ({r['n_windows']} of {r.get('total_windows', '?')})" if r.get("partial") else "no")
    console.print(tab)


def load_any(spec: str, dtype: str = "auto"):
    """An svdc output folder (rebuilt with its compressed modules) or a plain model."""
    from .checkpoint import is_compressed_folder, load_compressed
    if Path(spec).is_dir() and is_compressed_folder(spec):
        from transformers import AutoTokenizer
        return load_compressed(spec), AutoTokenizer.from_pretrained(spec)
    from .models import load_model
    m, tok, _ = load_model(spec, dtype=dtype, device="cpu")
    return m, tok


@app.command()
def export(src: Path = typer.Argument(..., help="an svdc output folder"),
           fmt: str = typer.Option("dense", "--format", help="dense | peft-adapter"),
           output: Path = typer.Option(..., "--output", "-o", help="where to write the export"),
           force: bool = typer.Option(False, "--force")) -> None:
    """Write a plain transformers checkpoint (dense) or a PEFT LoRA adapter + its base."""
    from .checkpoint import export_dense, export_peft_adapter
    if fmt == "dense":
        export_dense(src, output, force)
    elif fmt == "peft-adapter":
        export_peft_adapter(src, output, force)
    else:
        raise UserError(f"unknown export format {fmt!r}; use dense or peft-adapter")
    console.print(f"wrote {output}/")


@app.command()
def inspect(src: Path = typer.Argument(..., help="an svdc output folder")) -> None:
    """What a compressed model holds: part types, sizes, and the report's headline numbers."""
    from collections import Counter
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{src}: no config.json; pass an svdc output folder")
    cc = json.loads(cfg_path.read_text()).get("compression_config")
    if not cc:
        raise UserError(f"{src}: not an svdc compressed checkpoint (no compression_config)")
    kinds = Counter(" + ".join(p["type"] for p in s["parts"]) for s in cc["modules"].values())
    tab = Table(title=f"{src}: {len(cc['modules'])} compressed linears, stored as {cc['dtype']}")
    tab.add_column("parts")
    tab.add_column("modules", justify="right")
    for k, n in kinds.most_common():
        tab.add_row(k, str(n))
    console.print(tab)
    rep = src / "report.json"
    if rep.is_file():
        r = json.loads(rep.read_text())
        t = r["totals"]
        console.print(f"targets: {t['targets']['bits_per_weight']:.3f} bits/weight, "
                      f"{t['targets']['bytes_after'] / 2**20:.1f} MiB (was {t['targets']['bytes_before'] / 2**20:.1f}); "
                      f"model {t['model']['bytes_after'] / 2**20:.1f} MiB")
        for e in r.get("eval") or []:
            console.print(f"ppl {e['dataset']}: {e['ppl']:.3f}{' (partial)' if e.get('partial') else ''}")


@app.command()
def methods(name: Optional[str] = typer.Argument(None, help="show one method's options")) -> None:
    """List the compressors, or one compressor's options with their help."""
    from .methods import REGISTRY, get_method
    if name:
        cls = get_method(name)
        console.print(f"[bold]{cls.name}[/]: {cls.summary}")
        tab = Table()
        for c in ("option", "default", "help"):
            tab.add_column(c)
        for f, info in cls.Config.model_fields.items():
            tab.add_row("--" + f.replace("_", "-"), repr(info.default), info.description or "")
        console.print(tab)
        return
    tab = Table(title="svdc methods")
    tab.add_column("method")
    tab.add_column("what it does")
    for n in sorted(REGISTRY):
        tab.add_row(n, REGISTRY[n].summary)
    console.print(tab)


def main() -> None:
    import click
    debug = "--debug" in sys.argv
    try:
        rv = app(standalone_mode=False)
        if rv == 130:  # typer turns Ctrl-C into this return value
            raise KeyboardInterrupt
        sys.exit(rv if isinstance(rv, int) else 0)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        console.print("[yellow]interrupted[/]: no output folder was written; finished layers are "
                      "checkpointed, rerun the same command with --resume to continue")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except UserError as e:
        if debug:
            raise
        console.print(f"[red]error:[/] {e}")
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - the one place that turns crashes into one line
        if debug:
            raise
        console.print(f"[red]internal error:[/] {type(e).__name__}: {e} (rerun with --debug for the traceback)")
        sys.exit(1)


if __name__ == "__main__":
    main()
