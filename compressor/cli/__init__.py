"""The `svdc` command line: one module a command, all registered on one typer app."""

from compressor.cli import compress, evaluate, export, inspect, methods  # noqa: F401  (register)
from compressor.cli.app import app, main

__all__ = ["app", "main"]
