"""rich output for the CLI: progress bars (layer i/N, stage, elapsed, ETA) and logging."""

from __future__ import annotations

import logging
import os

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


_STATE = {"verbose": False}


def is_verbose() -> bool:
    """Whether -v/--debug was given (numerics and third-party logs are shown)."""
    return _STATE["verbose"]


def quiet_third_party() -> None:
    """Warnings and info from lm-eval, datasets and transformers stay out of a default run."""
    for name in ("lm_eval", "lm-eval", "datasets", "transformers", "accelerate", "evaluate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets
        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass


def setup_logging(verbose: bool) -> None:
    _STATE["verbose"] = verbose
    if not verbose:
        # third-party download/load bars (transformers' "Loading weights", datasets'): svdc
        # draws its own progress; read when those libraries are imported, so set them first
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
                        force=True)
    logging.getLogger("svdc").setLevel(logging.INFO)
    # per-module numerics (floors, retries): -v only; a default run prints one line per event
    logging.getLogger("svdc.numerics").setLevel(logging.INFO if verbose else logging.WARNING)


class RichProgress:
    """ProgressSink drawing one bar per stage."""

    def __init__(self) -> None:
        self._p = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                           MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                           TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("ETA"),
                           TimeRemainingColumn(), console=console, transient=False)
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> "RichProgress":
        self._p.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._p.__exit__(*exc)

    def start(self, stage: str, total: int, unit: str = "") -> None:
        self._tasks[stage] = self._p.add_task(stage, total=total, note="")

    def advance(self, stage: str, step: int = 1, note: str = "") -> None:
        if stage in self._tasks:
            self._p.update(self._tasks[stage], advance=step, note=note)

    def finish(self, stage: str) -> None:
        if stage in self._tasks:
            t = self._tasks[stage]
            self._p.update(t, completed=self._p.tasks[t].total)
