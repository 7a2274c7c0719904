"""Integrity of a written checkpoint: config.json records the sha256 of every weight file,
and loading checks them, so a flipped bit or an edited tensor is caught with the file named
instead of evaluated silently. Also the one safe reader of a checkpoint's config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compressor.errors import UserError
from compressor.models.integrity import file_sha256

HASHES = "weights_sha256"


def read_config(folder: Path) -> dict[str, Any]:
    """config.json as a mapping, or a UserError naming the file (missing, corrupt, not a
    mapping)."""
    path = Path(folder) / "config.json"
    if not Path(folder).is_dir():
        raise UserError(f"{folder}: not a folder; pass the folder `svdc compress -o` wrote")
    if not path.is_file():
        raise UserError(f"{folder}: no config.json; not a checkpoint folder (pass the folder "
                        f"`svdc compress -o` wrote)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt, re-create "
                        f"it") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON mapping; the checkpoint is corrupt, re-create it")
    return data


def weight_hashes(folder: Path, files: list[str]) -> dict[str, str]:
    return {f: file_sha256(Path(folder) / f) for f in files}


def verify_weights(folder: Path, cc: dict[str, Any]) -> int:
    """Check every weight file against the hashes in compression_config; return how many
    were checked (0 for a checkpoint written before hashes were recorded)."""
    recorded = cc.get(HASHES)
    if recorded is None:
        return 0
    if not isinstance(recorded, dict):
        raise UserError(f"{folder}/config.json: {HASHES} is malformed; the checkpoint is "
                        f"corrupt, re-create it")
    on_disk = sorted(p.name for p in Path(folder).glob("*.safetensors"))
    extra = [f for f in on_disk if f not in recorded]
    if extra:
        raise UserError(f"{Path(folder) / extra[0]}: weight file not recorded in config.json; "
                        f"it was added after svdc wrote the checkpoint: remove it or re-create "
                        f"the checkpoint (or pass --no-verify)")
    for name, want in sorted(recorded.items()):
        path = Path(folder) / name
        if not path.is_file():
            raise UserError(f"{path}: weight file is missing; the checkpoint is incomplete, "
                            f"re-create it")
        got = file_sha256(path)
        if got != want:
            raise UserError(f"{path}: sha256 {got[:12]}… does not match the {want[:12]}… "
                            f"recorded in config.json; the weights were modified or corrupted: "
                            f"re-create the checkpoint (or pass --no-verify to load it anyway)")
    return len(recorded)
