"""The typer app, global flags, and the one place that turns exceptions into exit codes."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from compressor.console import console, setup_logging
from compressor.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Post-training compression of Hugging Face causal LMs.")


_STATE = {"verbose": False}


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="log numerics (damping, floors) as they happen"),
          debug: bool = typer.Option(False, "--debug", help="show tracebacks")) -> None:
    _STATE["verbose"] = verbose or debug
    setup_logging(_STATE["verbose"])


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
        console.print(f"[red]error:[/] {escape(str(e))}")   # messages may hold [brackets]
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - the one place that turns crashes into one line
        if debug:
            raise
        console.print(f"[red]internal error:[/] {type(e).__name__}: {e} (rerun with --debug for the traceback)")
        sys.exit(1)
