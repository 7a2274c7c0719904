"""The pipeline reports progress through this small interface; the CLI plugs rich into it."""

from __future__ import annotations

from typing import Protocol


class ProgressSink(Protocol):
    def start(self, stage: str, total: int, unit: str = "") -> None: ...
    def advance(self, stage: str, step: int = 1, note: str = "") -> None: ...
    def finish(self, stage: str) -> None: ...


class NullProgress:
    """Progress that shows nothing (library use, tests)."""

    def start(self, stage: str, total: int, unit: str = "") -> None:
        pass

    def advance(self, stage: str, step: int = 1, note: str = "") -> None:
        pass

    def finish(self, stage: str) -> None:
        pass
