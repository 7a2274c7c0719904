"""Models load as data only: a folder whose config asks for its own Python code (auto_map)
is refused unless the user opts in with --trust-remote-code, which runs that code."""

from __future__ import annotations

import json
from pathlib import Path

from compressor.errors import UserError

_FILES = ("config.json", "tokenizer_config.json")


def remote_code_files(folder: Path) -> list[str]:
    """The config files in ``folder`` that name custom code (an ``auto_map`` entry)."""
    out = []
    for name in _FILES:
        try:
            data = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            out.append(name)
    return out


def check_remote_code(folder: Path, trust: bool) -> None:
    if trust:
        return
    found = remote_code_files(folder)
    if found:
        raise UserError(f"'{folder}' needs its own Python code ({found[0]} has an auto_map); svdc "
                        f"loads models as data only: pass --trust-remote-code to run the "
                        f"folder's code, only if you trust it")
