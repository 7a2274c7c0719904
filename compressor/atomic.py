"""Outputs appear whole or not at all: write into a hidden folder beside the target, rename.

The temporary names are fixed per output (``.<name>.tmp``, ``.<name>.old``), not per process,
so whatever a killed run left behind is removed by the next run on the same output (which
holds the output's lock, see compressor.safety.lock, so no live run owns them). Those names
are created exclusively (mkdir, O_EXCL) and a link found at one is refused, never followed
or deleted (compressor.safety.links).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from compressor.errors import UserError
from compressor.safety.links import check_output_link, check_own_path, own_paths


def check_output(target: Path, force: bool) -> None:
    check_output_link(target)
    if target.exists() and not force:
        raise UserError(f"output folder {target} already exists; pass --force to replace it "
                        f"or choose another -o")
    if target.exists() and not target.is_dir():
        raise UserError(f"output path {target} exists and is not a folder; choose another -o")


def leftovers(target: Path) -> list[Path]:
    """Temporary folders an earlier, killed run on ``target`` may have left (the current
    fixed names and the PID-suffixed names older versions used)."""
    skip = (f".{target.name}.lock", f".{target.name}.resume")
    return [p for p in own_paths(target) if p.name not in skip and os.path.lexists(p)]


def remove_leftovers(target: Path) -> None:
    """Delete them, refusing (not deleting) a link or a file found at one of those names."""
    for p in leftovers(target):
        check_own_path(p, "folder", target)
        shutil.rmtree(p, ignore_errors=True)


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
    """``path`` replaced whole; the temporary file beside it is created exclusively, so a link
    planted at its name is never written through (a stale one, inside svdc's own folder, is
    unlinked first)."""
    tmp = path.with_name(f".{path.name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileExistsError:
        tmp.unlink()
        fd = os.open(tmp, flags, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
