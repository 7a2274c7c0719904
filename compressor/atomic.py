"""Outputs appear whole or not at all: write into a hidden folder beside the target, rename.

The temporary names are fixed per output (``.<name>.tmp``, ``.<name>.old``), not per process,
so whatever a killed run left behind is removed by the next run on the same output (which
holds the output's lock, see compressor.safety.lock, so no live run owns them).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from compressor.errors import UserError


def check_output(target: Path, force: bool) -> None:
    if target.exists() and not force:
        raise UserError(f"output folder {target} already exists; pass --force to replace it "
                        f"or choose another -o")
    if target.exists() and not target.is_dir():
        raise UserError(f"output path {target} exists and is not a folder; choose another -o")


def leftovers(target: Path) -> list[Path]:
    """Temporary folders an earlier, killed run on ``target`` may have left (the current
    fixed names and the PID-suffixed names older versions used)."""
    name = target.name
    found = [target.parent / f".{name}.tmp", target.parent / f".{name}.old"]
    found += target.parent.glob(f".{name}.tmp-*")
    found += target.parent.glob(f".{name}.old-*")
    return [p for p in found if p.exists()]


def remove_leftovers(target: Path) -> None:
    for p in leftovers(target):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


@contextmanager
def atomic_dir(target: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``target`` in one rename."""
    target = Path(target)
    check_output(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    tmp = target.parent / f".{target.name}.tmp"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
