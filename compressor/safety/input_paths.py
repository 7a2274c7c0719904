"""Input paths a run reads or writes besides the model, checked before any work: a
--fisher-file that is a folder, a device or a dangling link would otherwise fail (or be
written through) after the gradient pass."""

from __future__ import annotations

from pathlib import Path

from compressor.errors import UserError


def check_fisher_path(path: str | None) -> None:
    """--fisher-file is read when it is a file and written when it does not exist: anything
    else (a folder, a device, a dangling link) is refused before any work."""
    if not path:
        return
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise UserError(f"--fisher-file {path} is a dangling symbolic link; pass a file path "
                        f"(it is written there when it does not exist)")
    if p.exists() and not p.is_file():
        raise UserError(f"--fisher-file {path} is not a file (a folder?); pass a file path, "
                        f"e.g. {p / 'fisher.safetensors'} (it is written there when it does not "
                        f"exist)")
    if not p.exists() and not p.parent.is_dir():
        raise UserError(f"--fisher-file {path}: its folder {p.parent} does not exist; create it "
                        f"or pass a path in an existing folder")
