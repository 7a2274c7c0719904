"""Save and reuse gradient statistics (--fisher-file): safetensors keyed by the windows and
target shapes they came from, so a file never silently feeds another run."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from compressor.core.gradients import Stats, stat_shape
from compressor.errors import UserError

FORMAT = "svdc-gradient-stats/1"


def gradient_fingerprint(windows: torch.Tensor, shapes: Mapping[str, tuple[int, ...]]) -> str:
    """sha256 of the token windows and the target names/shapes: what the statistics depend on
    besides the model weights (whose id the caller records separately in meta)."""
    h = hashlib.sha256()
    w = windows.detach().to("cpu", torch.int64).contiguous()
    h.update(str(tuple(w.shape)).encode())
    h.update(w.numpy().tobytes())
    for name in sorted(shapes):
        h.update(f"{name}:{tuple(shapes[name])};".encode())
    return h.hexdigest()


def save_gradient_stats(path: str | os.PathLike, stats: Stats, meta: Mapping[str, Any]) -> None:
    """Write ``{"<name>::<stat>": tensor}`` to safetensors, ``meta`` (JSON) in its metadata.

    Written to a temporary file beside ``path`` and renamed, so a crash leaves no half file.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for name, per in stats.items():
        for stat, t in per.items():
            if "::" in name:
                raise ValueError(f"target name {name!r} contains '::'")
            tensors[f"{name}::{stat}"] = t.detach().to("cpu", torch.float32).contiguous()
    metadata = {"format": FORMAT, "meta": json.dumps(dict(meta), sort_keys=True)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_gradient_stats(path: str | os.PathLike,
                        expected_names: Mapping[str, tuple[int, ...]] | Iterable[str] | None = None,
                        expected_meta: Mapping[str, Any] | None = None,
                        ) -> tuple[Stats, dict[str, Any]]:
    """Read a file written by ``save_gradient_stats``; returns ``(stats, meta)``.

    ``expected_names``: the target names (a mapping name -> (out, in) also checks shapes);
    ``expected_meta``: keys that must match (e.g. model id, nsamples, seqlen, seed,
    fingerprint). Any mismatch is a UserError: the file belongs to another model or config.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"gradient statistics file {path} does not exist: recompute it")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise UserError(f"{path} is not a readable safetensors file ({e}): delete it and "
                        "recompute the gradient statistics") from None
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path} is not an svdc gradient-statistics file: delete it and recompute")
    meta = json.loads(metadata.get("meta", "{}"))
    stats: Stats = {}
    for key, t in raw.items():
        name, _, stat = key.rpartition("::")
        stats.setdefault(name, {})[stat] = t
    _check_expected(path, stats, meta, expected_names, expected_meta)
    return stats, meta


def _check_expected(path: Path, stats: Stats, meta: dict[str, Any],
                    expected_names: Mapping[str, tuple[int, ...]] | Iterable[str] | None,
                    expected_meta: Mapping[str, Any] | None) -> None:
    fix = "it belongs to another model/config: delete it and recompute the gradient statistics"
    if expected_names is not None:
        want = set(expected_names)
        have = set(stats)
        if want != have:
            diff = sorted(want ^ have)
            raise UserError(f"{path}: target names differ ({len(diff)} e.g. {diff[0]!r}); {fix}")
        if isinstance(expected_names, Mapping):
            for name, shape in expected_names.items():
                for stat, t in stats[name].items():
                    if tuple(t.shape) != stat_shape(stat, tuple(shape)):
                        raise UserError(f"{path}: {name}::{stat} is {tuple(t.shape)}, the model's "
                                        f"weight is {tuple(shape)}; {fix}")
    for key, value in (expected_meta or {}).items():
        if meta.get(key) != value:
            raise UserError(f"{path}: {key} is {meta.get(key)!r}, expected {value!r}; {fix}")
