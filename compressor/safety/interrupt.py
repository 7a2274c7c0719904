"""Ctrl-C and SIGTERM end a run the same way: nothing half-written, one line saying what was
kept. SIGTERM becomes an exception (so every cleanup path runs) and exit code 143.
The resume hint is printed only when some layers were actually checkpointed."""

from __future__ import annotations

import signal
from pathlib import Path

_state: dict = {"signal": None, "checkpoints": None}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the same cleanup runs."""


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    _state["signal"] = "SIGTERM"
    raise Terminated()


def install() -> None:
    """Per CLI invocation: forget the last run's state, turn SIGTERM into Terminated."""
    _state.update(signal=None, checkpoints=None)
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (an embedding application): leave it alone
        pass


def note_checkpoints(folder: Path) -> None:
    """Called by the per-layer checkpointer: where finished layers go."""
    _state["checkpoints"] = Path(folder)


def checkpointed_layers() -> int:
    folder = _state["checkpoints"]
    if folder is None or not folder.is_dir():
        return 0
    return len(list(folder.glob("layer_*.json")))


def exit_code() -> int:
    return 143 if _state["signal"] == "SIGTERM" else 130


def resume_hint() -> str:
    """What a failed or stopped run kept: '' unless some layers are checkpointed."""
    n = checkpointed_layers()
    return (f"; {n} finished layer{'s are' if n != 1 else ' is'} checkpointed, rerun the same "
            f"command with --resume to continue" if n else "")


def message() -> str:
    what = "terminated (SIGTERM)" if _state["signal"] == "SIGTERM" else "interrupted"
    return f"{what}: no output folder was written{resume_hint()}"
