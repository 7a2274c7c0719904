"""svdc export: dense or PEFT-adapter checkpoints for tools that do not know svdc."""

from __future__ import annotations

from pathlib import Path

import typer

from compressor.console import console
from compressor.errors import UserError

from .app import app


@app.command()
def export(src: Path = typer.Argument(..., help="an svdc output folder"),
           fmt: str = typer.Option("dense", "--format", help="dense | peft-adapter"),
           output: Path = typer.Option(..., "--output", "-o", help="where to write the export"),
           force: bool = typer.Option(False, "--force")) -> None:
    """Write a plain transformers checkpoint (dense) or a PEFT LoRA adapter + its base."""
    from compressor.checkpoint import export_dense, export_peft_adapter
    if fmt == "dense":
        export_dense(src, output, force)
    elif fmt == "peft-adapter":
        export_peft_adapter(src, output, force)
    else:
        raise UserError(f"unknown export format {fmt!r}; use dense or peft-adapter")
    console.print(f"wrote {output}/")
