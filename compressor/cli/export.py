"""svdc export: checkpoints for tools that do not know svdc (dense, PEFT adapter,
compressed-tensors for transformers and vLLM)."""

from __future__ import annotations

from pathlib import Path

import typer

from compressor.console import console
from compressor.errors import UserError

from .app import app

FORMATS = ("dense", "peft-adapter", "compressed-tensors", "gguf")


@app.command()
def export(src: Path = typer.Argument(..., help="an svdc output folder"),
           fmt: str = typer.Option("dense", "--format", help=" | ".join(FORMATS)),
           output: Path = typer.Option(..., "--output", "-o", help="where to write the export"),
           force: bool = typer.Option(False, "--force", help="replace an earlier svdc output (never SRC)"),
           no_verify: bool = typer.Option(False, "--no-verify", help="skip the sha256 check of SRC's weights")) -> None:
    """Write a plain transformers checkpoint (dense), a PEFT LoRA adapter + its dense base, a
    compressed-tensors pack-quantized checkpoint (+ adapter/ for EoRA) for transformers and vLLM,
    or a llama.cpp GGUF file (-o FILE.gguf; + FILE.lora.gguf for EoRA / LQ-LoRA paths)."""
    from compressor.checkpoint import export_dense, export_peft_adapter
    from compressor.checkpoint.compressed_tensors import export_compressed_tensors
    from compressor.safety.guard import guarded_output
    exporters = {"dense": export_dense, "peft-adapter": export_peft_adapter,
                 "compressed-tensors": export_compressed_tensors}
    if fmt == "gguf":   # one file, guarded by gguf_export.check_gguf_output
        from compressor.checkpoint.gguf_export import export_gguf
        export_gguf(src, output, force, verify=not no_verify)
        console.print(f"wrote {output}")
        return
    if fmt not in exporters:
        raise UserError(f"unknown export format {fmt!r}; use {', '.join(FORMATS)}")
    with guarded_output(output, force, [src]):
        exporters[fmt](src, output, force, verify=not no_verify)
    console.print(f"wrote {output}/")
