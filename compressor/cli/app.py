"""The typer app, global flags, and the one place that turns exceptions into exit codes."""

from __future__ import annotations

import importlib
import sys

import typer
import typer.main
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


def _kept(text: str) -> str:
    """An error after some layers were checkpointed says that --resume continues (unless the
    message is itself about --resume)."""
    return text if "--resume" in text else text + interrupt.resume_hint()


def _click_exceptions() -> tuple[tuple, tuple, tuple, tuple]:
    """(Exit, Abort, UsageError, ClickException) classes: typer >= 0.2x raises those of its
    vendored click (typer._click), older typer those of standalone click; catch both."""
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass

    def pick(attr: str, *extra: type) -> tuple:
        return tuple(dict.fromkeys([*extra, *(getattr(m, attr) for m in mods if hasattr(m, attr))]))
    return (pick("Exit", typer.Exit), pick("Abort", typer.Abort), pick("UsageError"),
            pick("ClickException"))


def _split_root(argv: list[str]) -> tuple[list[str], str | None]:
    """The root's options and the command word: the root's options are all flags, so the
    first word not starting with '-' is the command."""
    for i, a in enumerate(argv):
        if not a.startswith("-"):
            return argv[:i], a
    return argv, None


def _usage_line(e: Exception, argv: list[str]) -> str:
    """Click's message (its did-you-mean included) on one line, plus where to look: the
    command's --help, or for a global option given after the command, where it goes."""
    msg = " ".join(e.format_message().split())
    msg += "" if msg.endswith((".", "?", "!")) else "."
    ctx = getattr(e, "ctx", None)
    if ctx is None:   # click's parser raises some errors (an option's missing value) bare
        word = _split_root(argv)[1]
        where = f"svdc {word}" if word in typer.main.get_command(app).commands else "svdc"
        return f"{msg} See `{where} --help`"
    root = ctx.find_root()
    opt = getattr(e, "option_name", None)
    globals_ = {o for p in root.command.params for o in p.opts}
    if type(e).__name__ == "NoSuchOption" and ctx is not root and opt in globals_:
        return (f"{msg} {opt} is a global option: put it before the command, "
                f"`{root.command_path} {opt} {ctx.info_name} ...`")
    return f"{msg} See `{ctx.command_path} --help`"


def main() -> None:
    argv = sys.argv[1:]
    debug = "--debug" in _split_root(argv)[0]   # after the command it is a usage error
    exits, aborts, usage_errors, click_errors = _click_exceptions()
    interrupt.install()
    try:
        rv = app(standalone_mode=False, prog_name="svdc")   # hints name `svdc`, however run
        if rv == 130:  # typer turns Ctrl-C (and our SIGTERM) into this return value
            raise KeyboardInterrupt
        sys.exit(rv if isinstance(rv, int) else 0)
    except exits as e:
        sys.exit(e.exit_code)
    except (*aborts, KeyboardInterrupt):
        what, _, rest = interrupt.message().partition(": ")
        _error(rest, what, "yellow")
        sys.exit(interrupt.exit_code())
    except usage_errors as e:
        if type(e).__name__ == "NoArgsIsHelpError":   # bare `svdc`: the help (rich: printed)
            text = e.format_message()
            if text.strip():
                print(text, file=sys.stderr)
            sys.exit(e.exit_code)
        if debug:
            raise
        _error(_usage_line(e, argv))
        sys.exit(e.exit_code)
    except click_errors as e:
        if debug:
            raise
        _error(" ".join(e.format_message().split()))
        sys.exit(e.exit_code)
    except UserError as e:
        if debug:
            raise
        _error(_kept(str(e)))
        sys.exit(getattr(e, "exit_code", EXIT_USER))
    except Exception as e:  # noqa: BLE001 - the one place that turns crashes into one line
        if debug:
            raise
        msg = user_message(e)
        if msg is not None:
            _error(_kept(msg))
            sys.exit(EXIT_USER)
        _error(_kept(f"{type(e).__name__}: {e} (rerun with --debug for the traceback)"),
               "internal error")
        sys.exit(EXIT_INTERNAL)
