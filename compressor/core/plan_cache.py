"""A stage's planning measures kept on disk (``measures_file``), so a second budget on the same
model, calibration and menu skips the planning pass: the plan's menu is priced once and every
``--target-bits`` after that costs the ILP and the sequential pass only.

The file is JSON: a key (sha256 of the model files' identity, the calibration windows, the
stage's pricing options, the storage dtype and the svdc version) and the measures. A file
whose key differs is re-measured and replaced, with a note; one that is not svdc's (or is
malformed) is refused in one line, never silently overwritten.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from compressor import __version__
from compressor.atomic import atomic_write_text
from compressor.core.resume import fingerprint
from compressor.errors import UserError

log = logging.getLogger("svdc")
FORMAT = "svdc-plan-measures-1"


def measures_key(model_info: dict[str, Any], windows: torch.Tensor, pricing: dict[str, Any],
                 storage_dtype: torch.dtype, seed: int) -> str:
    """What the measures depend on: not the budget, so every budget shares one file."""
    spec = json.dumps({"pricing": pricing, "storage_dtype": str(storage_dtype), "seed": seed},
                      sort_keys=True, default=str)
    return fingerprint(model_info, windows, spec, __version__)


def load_measures(path: str | Path, key: str) -> dict[str, Any] | None:
    """The stored measures when ``path`` holds them for ``key``; None when it is absent or
    made for another model, calibration or menu (it is then re-measured)."""
    p = Path(path).expanduser()
    if not p.exists():
        return None
    if not p.is_file():
        raise UserError(f"measures file {p} is not a file; pass a file path (it is created)")
    try:
        data = json.loads(p.read_text())
        ok = isinstance(data, dict) and data.get("format") == FORMAT \
            and isinstance(data.get("measures"), dict)
    except (OSError, UnicodeDecodeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"measures file {p} is not an svdc plan-measures file; move it away or "
                        f"pass another path")
    if data.get("key") != key:
        log.info("measures file %s was made for another model, calibration or menu: "
                 "re-measuring and replacing it", p)
        return None
    log.info("plan measures read from %s (the planning pass is skipped)", p)
    return data["measures"]


def save_measures(path: str | Path, key: str, measures: dict[str, Any]) -> None:
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, json.dumps({"format": FORMAT, "key": key, "version": __version__,
                                     "measures": measures}))
