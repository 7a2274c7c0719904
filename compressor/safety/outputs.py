"""Which folder ``-o`` may write and ``--force`` may replace, decided before the model loads.

--force replaces only an earlier svdc output (or an empty folder): never a folder that is or
contains the model, the recipe or the calibration file, never the current folder or one of
its ancestors. Anything else is refused with one line naming the reason.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from compressor.errors import UserError

from .links import check_output_link


def _config(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_svdc_output(folder: Path) -> bool:
    """An empty folder, a compressed checkpoint, or an svdc export (dense or PEFT)."""
    if not any(folder.iterdir()):
        return True
    cfg = _config(folder)
    if cfg is not None and ("compression_config" in cfg or "svdc_export" in cfg):
        return True
    base = _config(folder / "base") if (folder / "base").is_dir() else None
    return base is not None and "svdc_export" in base and (folder / "adapter").is_dir()


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists():
        p = p.parent
    return p


def check_writable(target: Path) -> None:
    """The folder that will hold the output (and its lock) must be creatable and writable."""
    base = _nearest_existing(target.parent)
    if not base.is_dir():
        raise UserError(f"cannot write output {target}: {base} is a file, not a folder; "
                        f"choose another -o")
    try:
        fd, probe = tempfile.mkstemp(prefix=".svdc-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write output {target}: {base} is not writable "
                        f"({e.strerror or e}); choose another -o") from None


def check_output_path(target: Path, force: bool, protected: Iterable[Path] = ()) -> None:
    """Refuse an output that cannot be written or must not be replaced; create nothing but
    the parent folders. ``protected``: the run's inputs (model, recipe, calibration file)."""
    check_output_link(target)
    resolved = target.expanduser().resolve()
    cwd = Path.cwd().resolve()
    if _within(cwd, resolved):
        what = "the current folder" if resolved == cwd else "an ancestor of the current folder"
        raise UserError(f"output {target} is {what}: svdc replaces its output as a whole; "
                        f"choose a new folder, e.g. -o out/model-compressed")
    for p in protected:
        p = Path(p).expanduser().resolve()
        if _within(p, resolved):
            what = "is" if p == resolved else "contains"
            raise UserError(f"output {target} {what} an input of this run ({p}); "
                            f"choose another -o (--force never replaces an input)")
    if resolved.exists() and not resolved.is_dir():
        raise UserError(f"output path {target} exists and is not a folder; choose another -o")
    if resolved.is_dir():
        if not force:
            raise UserError(f"output folder {target} already exists; pass --force to replace it "
                            f"or choose another -o")
        if not is_svdc_output(resolved):
            raise UserError(f"output folder {target} exists and is not an svdc output (no "
                            f"compression_config in its config.json); --force replaces only "
                            f"earlier svdc outputs or empty folders: choose another -o")
    check_writable(resolved)


def inputs_of(*paths: str | Path | None) -> list[Path]:
    """The given paths that exist on disk (a Hub id or a built-in dataset name is skipped)."""
    out = []
    for p in paths:
        if p and Path(str(p)).expanduser().exists():
            out.append(Path(str(p)).expanduser())
    return out
