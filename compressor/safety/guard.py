"""The one entry for every command that writes an output folder (compress, run, export):
validate the path against the run's inputs, take the output's lock, clear what a killed
earlier run left, all before any model is loaded."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from compressor.atomic import remove_leftovers

from .lock import OutputLock
from .outputs import check_output_path, inputs_of

__all__ = ["guarded_output", "inputs_of"]


@contextmanager
def guarded_output(output: Path, force: bool, protected: Iterable[Path] = ()) -> Iterator[Path]:
    output = Path(output)
    check_output_path(output, force, list(protected))
    with OutputLock(output):
        # checked again under the lock: another run may have finished writing it meanwhile
        check_output_path(output, force, list(protected))
        remove_leftovers(output)
        yield output
