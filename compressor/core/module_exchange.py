"""Compressed modules as one byte buffer for a broadcast between ranks (spec, report row and
tensors), so every rank receives them bit for bit."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _numel(module: nn.Module) -> int:
    w = getattr(module, "weight", None)
    return int(w.numel()) if isinstance(w, torch.Tensor) else sum(p.numel() for p in module.parameters())


_ALIGN = 16


def _pack(layer: nn.Module, rels: list[str], rows: dict[str, dict[str, Any]],
          device: torch.device) -> tuple[dict[str, Any], torch.Tensor]:
    """Specs, rows and tensor layout of the modules ``rels`` plus their state dicts as one flat
    byte buffer (any dtype: packed codes, fp16 scales, int16 indices travel bit for bit)."""
    entries, chunks, offset = [], [], 0
    specs = {}
    for rel in rels:
        mod = layer.get_submodule(rel)
        specs[rel] = mod.spec()
        for key, t in mod.state_dict().items():
            t = t.detach().contiguous()
            raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
            n = raw.numel()
            pad = (-n) % _ALIGN
            entries.append({"rel": rel, "key": key, "dtype": str(t.dtype).removeprefix("torch."),
                            "shape": list(t.shape), "offset": offset, "nbytes": n})
            chunks.append(raw.to(device))
            if pad:
                chunks.append(torch.zeros(pad, dtype=torch.uint8, device=device))
            offset += n + pad
    buf = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8, device=device)
    return {"specs": specs, "rows": rows, "entries": entries, "nbytes": offset}, buf


def _unpack(meta: dict[str, Any], buf: torch.Tensor) -> list[tuple[str, nn.Module]]:
    from compressor.parts import CompressedLinear
    states: dict[str, dict[str, torch.Tensor]] = {rel: {} for rel in meta["specs"]}
    for e in meta["entries"]:
        dtype = getattr(torch, e["dtype"])
        raw = buf[e["offset"]:e["offset"] + e["nbytes"]].to("cpu")
        t = (raw.view(dtype) if e["nbytes"] else torch.empty(0, dtype=dtype)).reshape(e["shape"]).clone()
        states[e["rel"]][e["key"]] = t
    out = []
    for rel, spec in meta["specs"].items():
        sd = states[rel]
        float_dtype = next((t.dtype for t in sd.values() if t.is_floating_point()), torch.float32)
        mod = CompressedLinear.from_spec(spec, float_dtype)
        mod.load_state_dict(sd, strict=True, assign=True)
        out.append((rel, mod))
    return out
