"""The typer app, global flags, and the one place that turns exceptions into exit codes."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from compressor.console import console, setup_logging
from compressor.errors import UserError
from compressor.safety import interrupt
from compressor.safety.oserrors import user_message

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Post-training compression of Hugging Face causal LMs.")


_STATE = {"verbose": False}


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="log numerics (damping, floors) as they happen"),
          debug: bool = typer.Option(False, "--debug", help="show tracebacks")) -> None:
    _STATE["verbose"] = verbose or debug
    setup_logging(_STATE["verbose"])


EXIT_USER, EXIT_EXPECT, EXIT_INTERNAL = 2, 3, 1   # 130 Ctrl-C, 143 SIGTERM: safety.interrupt


def _error(text: str, label: str = "error", color: str = "red") -> None:
    """One line, never wrapped (a long path must not split the message)."""
    console.print(f"[{color}]{label}:[/] {escape(text)}" if label else escape(text),
                  soft_wrap=True, highlight=False)


def main() -> None:
    import click
    debug = "--debug" in sys.argv
    interrupt.install()
    try:
        rv = app(standalone_mode=False)
        if rv == 130:  # typer turns Ctrl-C (and our SIGTERM) into this return value
            raise KeyboardInterrupt
        sys.exit(rv if isinstance(rv, int) else 0)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        what, _, rest = interrupt.message().partition(": ")
        _error(rest, what, "yellow")
        sys.exit(interrupt.exit_code())
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except UserError as e:
        if debug:
            raise
        _error(str(e))
        sys.exit(getattr(e, "exit_code", EXIT_USER))
    except Exception as e:  # noqa: BLE001 - the one place that turns crashes into one line
        if debug:
            raise
        msg = user_message(e)
        if msg is not None:
            _error(msg)
            sys.exit(EXIT_USER)
        _error(f"{type(e).__name__}: {e} (rerun with --debug for the traceback)", "internal error")
        sys.exit(EXIT_INTERNAL)
