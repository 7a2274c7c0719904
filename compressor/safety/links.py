"""The names svdc makes beside an output OUT (``.OUT.lock``, ``.OUT.tmp``, ``.OUT.old``,
``.OUT.resume``) are svdc's to create, write and delete, so whatever already sits there is
checked before any work: a planted link would make svdc write or delete through it, and an
input living there (a model folder that is ``.OUT.resume``, a calibration file named
``.OUT.lock``) would be overwritten or deleted by the run itself. ``-o`` itself must not be a
link: the final rename would replace the link, not the folder it names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from compressor.errors import UserError

_ROLES = {"lock": "lock file", "tmp": "temporary folder", "old": "folder for the output it "
          "replaces", "resume": "resume folder"}
_LEGACY = re.compile(r"\.(tmp|old)-\d+")     # PID-suffixed names of older versions


def own_paths(output: Path) -> dict[Path, str]:
    """Each name svdc creates beside ``output``, with its role ("lock file", ...)."""
    parent, name = output.parent, output.name
    out = {parent / f".{name}.{k}": role for k, role in _ROLES.items()}
    try:
        entries = os.listdir(parent or ".")
    except OSError:          # no such folder yet (or unreadable): no leftovers to find
        entries = []
    prefix = f".{name}"
    out.update({parent / e: _ROLES["tmp"] for e in entries
                if e.startswith(prefix) and _LEGACY.fullmatch(e[len(prefix):])})
    return out


def _kind(role: str) -> str:
    return "file" if role.endswith("file") else "folder"


def check_own_path(path: Path, what: str, output: Path | None = None) -> None:
    """Refuse a link at one of svdc's names, or something of the wrong kind there."""
    _refuse_link(path, output)
    _refuse_kind(path, what, output)


def _beside(output: Path | None) -> str:
    return f"output {output}" if output is not None else "its output"


def _refuse_link(path: Path, output: Path | None) -> None:
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link (to {os.readlink(path)}); svdc creates this "
                        f"name itself beside {_beside(output)} and never writes or deletes "
                        f"through a link: remove the link or choose another -o")


def _refuse_kind(path: Path, what: str, output: Path | None) -> None:
    if not os.path.lexists(path):
        return
    if not (path.is_dir() if what == "folder" else path.is_file()):
        raise UserError(f"{path} exists and is not a {what} svdc made for {_beside(output)}: "
                        f"move it away or choose another -o")


def _real(path: Path) -> Path:
    """``path`` with its folder's links resolved but not its own last name."""
    return path.parent.expanduser().resolve() / path.name


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_inputs_outside(output: Path, uses: Iterable[str | Path | None]) -> None:
    """Refuse a path the run reads or writes (model, recipe, calibration, Fisher file) that is,
    or lies inside, one of the names svdc creates and deletes beside ``output``."""
    own = {_real(p): role for p, role in own_paths(output).items()}
    for u in uses:
        if not u:
            continue
        real = Path(str(u)).expanduser().resolve()
        for p, role in own.items():
            if _within(real, p):
                where = "is" if real == p else f"lies inside {p},"
                raise UserError(f"input {u} {where} svdc's own {role} for output {output}, "
                                f"which a run creates and deletes: move the input elsewhere or "
                                f"choose another -o")


def check_output_link(target: Path) -> None:
    """``-o`` may not be a link: renaming the new folder into place would replace the link
    (leaving the folder it names and ``.<link>.old`` behind), and a dangling one would fail
    only at that rename, after the whole run."""
    t = Path(target).expanduser()
    if not t.is_symlink():
        return
    dest = os.readlink(t)
    if not t.exists():
        raise UserError(f"output {target} is a symbolic link to {dest}, which does not exist; "
                        f"svdc writes its output as a new folder, never through a link: remove "
                        f"the link or choose another -o")
    raise UserError(f"output {target} is a symbolic link to {dest}; svdc never replaces or "
                    f"writes through a link: pass the folder itself, -o {t.resolve()}, or "
                    f"choose another -o")


def check_links(output: Path, uses: Iterable[str | Path | None]) -> None:
    """Everything above, for one output, before any work (links first: an input is located
    only once no planted link can redirect the comparison)."""
    output = Path(output).expanduser()
    check_output_link(output)
    own = own_paths(output)
    for path in own:
        _refuse_link(path, output)
    check_inputs_outside(output, uses)
    for path, role in own.items():
        _refuse_kind(path, _kind(role), output)
