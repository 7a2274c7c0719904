"""svdc methods: the compressors, or one compressor's options with their help."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from compressor.console import console

from .app import app


def _how(field: str) -> str:
    """How compress takes the option: its own flag, else --set key=value (a recipe takes
    every option as the key itself)."""
    from .compress import STAGE_FLAGS
    return "--" + field.replace("_", "-") if field in STAGE_FLAGS else f"--set {field}=..."


def _default(info) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        value = info.default_factory()
        text = repr(value)
        return text if len(text) <= 40 else f"{type(value).__name__} of {len(value)} (see help)"
    return repr(info.default)


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
            if f == "method":
                continue
            tab.add_row(_how(f), _default(info), info.description or "")
        console.print(tab)
        return
    tab = Table(title="svdc methods")
    tab.add_column("method")
    tab.add_column("what it does")
    for n in method_names():
        tab.add_row(n, stage_class(n).summary)
    console.print(tab)
