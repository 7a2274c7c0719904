"""svdc eval: perplexity of an svdc output or any model MODEL names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from compressor.console import RichProgress, console

from .app import app


@app.command("eval")
def eval_cmd(model: str = typer.Argument(..., help="an svdc output folder, or any MODEL `compress` takes"),
             dataset: list[str] = typer.Option(["builtin"], "--dataset", "-d", help="wikitext2 | c4 | builtin | PATH"),
             seqlen: int = typer.Option(2048, help="window length (capped by the model's context)"),
             max_windows: Optional[int] = typer.Option(None, "--max-windows", help="quick partial run"),
             device: str = typer.Option("auto"),
             dtype: str = typer.Option("auto"),
             as_json: bool = typer.Option(False, "--json", help="print the result as JSON on stdout"),
             no_verify: bool = typer.Option(False, "--no-verify", help="skip the sha256 check of an svdc output's weights"),
             trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                                    help="run Python code shipped in the model folder; only for folders you trust")) -> None:
    """Perplexity with the GPTQ protocol (non-overlapping windows, no special tokens)."""
    from compressor.evaluate import evaluate
    from compressor.models import resolve_device
    dev = resolve_device(device)
    model_obj, tok = load_any(model, dtype, verify=not no_verify, trust_remote_code=trust_remote_code)
    model_obj.to(dev)
    results = []
    with RichProgress() as progress:
        for ds in dataset:
            from compressor.api import _progress_fn
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


def load_any(spec: str, dtype: str = "auto", verify: bool = True, trust_remote_code: bool = False):
    """An svdc output folder (rebuilt with its compressed modules, weights verified) or a
    plain model."""
    from compressor.checkpoint import is_compressed_folder, load_compressed
    if Path(spec).is_dir() and is_compressed_folder(spec):
        from transformers import AutoTokenizer
        return (load_compressed(spec, verify=verify),
                AutoTokenizer.from_pretrained(spec, trust_remote_code=False))
    from compressor.models import load_model
    m, tok, _ = load_model(spec, dtype=dtype, device="cpu", trust_remote_code=trust_remote_code)
    return m, tok
