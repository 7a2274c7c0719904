"""svdc methods: the compressors, or one compressor's options with their help."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from compressor.console import console

from .app import app


@app.command()
def methods(name: Optional[str] = typer.Argument(None, help="show one method's options")) -> None:
    """List the compressors, or one compressor's options with their help."""
    from compressor.core.registry import method_names, stage_class
    if name:
        cls = stage_class(name)
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
    for n in method_names():
        tab.add_row(n, stage_class(n).summary)
    console.print(tab)
