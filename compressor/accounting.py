"""Parameters and bytes counted from the tensors actually written, not from formulas."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def safetensors_entries(path: Path) -> dict[str, tuple[int, int]]:
    """{key: (numel, bytes)} read from a safetensors header (the file's own truth)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        numel = 1
        for d in v["shape"]:
            numel *= d
        start, end = v["data_offsets"]
        out[k] = (numel, end - start)
    return out


def written_entries(folder: Path) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(safetensors_entries(f))
    return out


def model_footprint(model: nn.Module, source_dtype: torch.dtype | None = None) -> tuple[int, int]:
    """(params, bytes) of a model's unique tensors (tied weights once, by identity, so a
    meta-device skeleton counts the same as the loaded model); floating tensors are counted at
    ``source_dtype``'s size when given: "before" means the checkpoint as it was on disk, not
    its float32 copy in memory."""
    seen, numel, nbytes = set(), 0, 0
    for t in model.state_dict(keep_vars=True).values():
        if id(t) in seen:
            continue
        seen.add(id(t))
        numel += t.numel()
        size = source_dtype.itemsize if source_dtype is not None and t.is_floating_point() \
            else t.element_size()
        nbytes += t.numel() * size
    return numel, nbytes


def bytes_before_in(records: list[Any], source_dtype: torch.dtype) -> None:
    """Set each module row's ``bytes_before`` to its weight and bias in the checkpoint's own
    dtype (in place): the pipeline sees them in the compute dtype."""
    for r in records:
        r.bytes_before = r.params_before * source_dtype.itemsize


def totals(entries: dict[str, tuple[int, int]], target_names: list[str],
           before_targets: tuple[int, int], before_model: tuple[int, int]) -> dict[str, Any]:
    # The targets block counts what replaces each weight matrix (core.measures' rule: a bias
    # is not a weight, and ``before_targets`` counts the weights alone).
    prefixes = tuple(n + "." for n in target_names)
    biases = {n + ".bias" for n in target_names}
    mine = [v for k, v in entries.items() if k.startswith(prefixes) and k not in biases]
    t_numel = sum(v[0] for v in mine)
    t_bytes = sum(v[1] for v in mine)
    m_numel = sum(v[0] for v in entries.values())
    m_bytes = sum(v[1] for v in entries.values())

    def block(before: tuple[int, int], after_numel: int, after_bytes: int) -> dict[str, Any]:
        return {"params_before": before[0], "params_after": after_numel,
                "bytes_before": before[1], "bytes_after": after_bytes,
                "params_kept": after_numel / max(before[0], 1),
                "bytes_kept": after_bytes / max(before[1], 1),
                "bits_per_weight": 8 * after_bytes / max(before[0], 1)}

    return {"targets": block(before_targets, t_numel, t_bytes),
            "model": block(before_model, m_numel, m_bytes)}


# What each stored tensor of a compressed linear is, by part type and buffer name.
_QUANT_PARTS = ("quant", "nf")
_LOWRANK_PARTS = ("lowrank", "qlowrank")


def _category(part_type: str | None, buffer: str) -> str:
    if part_type is None:
        return "bias" if buffer == "bias" else "dense"
    if part_type in _QUANT_PARTS:
        return "codes" if buffer == "qcodes" else "scales"
    if part_type in _LOWRANK_PARTS:
        return "lowrank"
    return {"dense": "dense"}.get(part_type, part_type)   # sparse, dictionary, channels


def bits_split(folder: Path, target_names: list[str], before_params: int) -> dict[str, float]:
    """Bits per original target weight, split by what stores them: ``codes`` (quantized
    integers), ``scales`` (their scales / zero points / absmax), ``lowrank`` (low-rank factors,
    quantized or not), ``sparse``, ``dictionary``, ``channels``, ``dense`` (targets left dense).
    Counted from the written tensors and config.json's part specs; sums to the targets'
    bits_per_weight (biases excluded, as there)."""
    cfg = json.loads((folder / "config.json").read_text())
    modules = (cfg.get("compression_config") or {}).get("modules", {})
    entries = written_entries(folder)
    out: dict[str, int] = {}
    for name in target_names:
        parts = modules.get(name, {}).get("parts")
        prefix = name + "."
        for key, (_, nbytes) in entries.items():
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            if rest == "bias":
                continue
            ptype, buffer = None, rest
            if parts is not None and rest.startswith("parts."):
                _, idx, buffer = rest.split(".", 2)
                ptype = parts[int(idx)]["type"]
            cat = _category(ptype, buffer)
            out[cat] = out.get(cat, 0) + nbytes
    order = ("codes", "scales", "lowrank", "sparse", "dictionary", "channels", "dense")
    keys = sorted(out, key=lambda k: (order.index(k) if k in order else len(order), k))
    return {k: 8 * out[k] / max(before_params, 1) for k in keys}
