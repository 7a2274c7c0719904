"""The one entry for every command that writes an output folder (compress, run, export):
validate the path against the run's inputs, refuse links and inputs at the names svdc makes
beside it, take the output's lock, clear what a killed earlier run left, all before any model
is loaded."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from compressor.atomic import remove_leftovers

from .links import check_links
from .lock import OutputLock
from .outputs import check_output_path, inputs_of

__all__ = ["guarded_output", "inputs_of"]


@contextmanager
def guarded_output(output: Path, force: bool, protected: Iterable[Path] = (),
                   uses: Iterable[str | Path | None] | None = None) -> Iterator[Path]:
    """``protected``: the inputs on disk, which the output may not be or contain; ``uses``:
    every path the run reads or writes, existing or not (default: ``protected``), none of
    which may be one of svdc's own names beside the output."""
    output = Path(output)
    protected = list(protected)
    uses = protected if uses is None else list(uses)
    check_output_path(output, force, protected)
    check_links(output, uses)
    with OutputLock(output):
        # checked again under the lock: another run may have finished writing it meanwhile
        check_output_path(output, force, protected)
        check_links(output, uses)
        remove_leftovers(output)
        yield output
