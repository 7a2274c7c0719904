"""svdc export: checkpoints for tools that do not know svdc (dense, PEFT adapter,
compressed-tensors for transformers and vLLM)."""

from __future__ import annotations

from pathlib import Path

import typer

from compressor.console import console
from compressor.errors import UserError

from .app import app

FORMATS = ("dense", "peft-adapter", "compressed-tensors")


@app.command()
def export(src: Path = typer.Argument(..., help="an svdc output folder"),
           fmt: str = typer.Option("dense", "--format", help=" | ".join(FORMATS)),
           output: Path = typer.Option(..., "--output", "-o", help="where to write the export"),
           force: bool = typer.Option(False, "--force")) -> None:
    """Write a plain transformers checkpoint (dense), a PEFT LoRA adapter + its dense base, or a
    compressed-tensors pack-quantized checkpoint (+ adapter/ for EoRA) for transformers and vLLM."""
    from compressor.checkpoint import export_dense, export_peft_adapter
    if fmt == "dense":
        export_dense(src, output, force)
    elif fmt == "peft-adapter":
        export_peft_adapter(src, output, force)
    elif fmt == "compressed-tensors":
        from compressor.checkpoint.compressed_tensors import export_compressed_tensors
        export_compressed_tensors(src, output, force)
    else:
        raise UserError(f"unknown export format {fmt!r}; use {', '.join(FORMATS)}")
    console.print(f"wrote {output}/")
