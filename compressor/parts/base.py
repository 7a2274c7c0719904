"""The compressed linear layer and the contract its parts follow.

A compressed linear is a sum of *parts* plus the original bias:

    y = sum_p part_p(x) + b

Each part is one storage format (low-rank factors, packed quantized codes, sparse
outliers, a dictionary with sparse codes, ...). Composition covers every method:
GPTQ + EoRA is [quant, lowrank], GWQ is [quant, sparse], LOST is [lowrank, channels].

A part describes itself with a JSON-able ``spec`` (type name + the few integers needed to
allocate its tensors); ``from_spec`` rebuilds an empty part of the same shapes so that a
checkpoint can be loaded with a strict key check. All tensors a part stores are registered
buffers, so ``state_dict`` holds exactly what goes to disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn

PART_TYPES: dict[str, type["Part"]] = {}


def register_part(cls: type["Part"]) -> type["Part"]:
    """Class decorator: make a part type loadable by its ``type_name``."""
    if cls.type_name in PART_TYPES:
        raise ValueError(f"part type {cls.type_name!r} registered twice")
    PART_TYPES[cls.type_name] = cls
    return cls


class Part(nn.Module):
    """One additive term of a compressed linear: x (..., in) -> (..., out)."""

    type_name: ClassVar[str] = ""
    # True for a part whose forward decodes its whole weight on every call (packed codes):
    # ``materialized`` then decodes it once for a block of forwards.
    decodes_per_call: ClassVar[bool] = False
    _decoded: torch.Tensor | None = None

    def __init__(self, out_features: int, in_features: int):
        super().__init__()
        self.out_features = out_features
        self.in_features = in_features

    # --- to implement -----------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def dense(self) -> torch.Tensor:
        """This part's contribution to the weight, (out, in), float32."""
        raise NotImplementedError

    def extra_spec(self) -> dict[str, Any]:
        """The integers/flags (beyond out/in) that ``from_spec`` needs."""
        return {}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], dtype: torch.dtype) -> "Part":
        """An empty part with the shapes ``spec`` describes (values to be loaded)."""
        raise NotImplementedError

    # --- shared -----------------------------------------------------------------------
    def decoded(self) -> torch.Tensor:
        """``dense()``, or its copy decoded once by an enclosing ``materialized``."""
        return self._decoded if self._decoded is not None else self.dense()

    def spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "out": self.out_features, "in": self.in_features,
                **self.extra_spec()}

    def stored_numel(self) -> int:
        return sum(t.numel() for t in self.state_dict().values())

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())


class CompressedLinear(nn.Module):
    """Drop-in replacement for ``nn.Linear`` whose weight is a sum of parts."""

    def __init__(self, out_features: int, in_features: int, parts: list[Part],
                 bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features = out_features
        self.in_features = in_features
        for p in parts:
            if (p.out_features, p.in_features) != (out_features, in_features):
                raise ValueError(
                    f"part {p.type_name} is {p.out_features}x{p.in_features}, "
                    f"layer is {out_features}x{in_features}")
        self.parts = nn.ModuleList(parts)
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.parts[0](x)
        for p in self.parts[1:]:
            y = y + p(x)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def dense_weight(self) -> torch.Tensor:
        """The weight this layer applies, materialized (out, in) in float32."""
        w = self.parts[0].dense()
        for p in self.parts[1:]:
            w = w + p.dense()
        return w

    @property
    def weight(self) -> torch.Tensor:
        """Materialized weight for code that reads ``.weight`` (e.g. dtype probes)."""
        return self.dense_weight()

    def spec(self) -> dict[str, Any]:
        return {"out": self.out_features, "in": self.in_features,
                "bias": self.bias is not None, "parts": [p.spec() for p in self.parts]}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], dtype: torch.dtype) -> "CompressedLinear":
        parts = []
        for ps in spec["parts"]:
            if ps["type"] not in PART_TYPES:
                raise ValueError(f"unknown compressed part type {ps['type']!r} "
                                 f"(known: {sorted(PART_TYPES)}); was this saved by a newer svdc?")
            parts.append(PART_TYPES[ps["type"]].from_spec(ps, dtype))
        bias = torch.zeros(spec["out"], dtype=dtype) if spec["bias"] else None
        return cls(spec["out"], spec["in"], parts, bias)

    def stored_numel(self) -> int:
        return sum(t.numel() for t in self.state_dict().values())

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, "
                f"parts=[{', '.join(p.type_name for p in self.parts)}]")


@contextmanager
def materialized(root: nn.Module) -> Iterator[None]:
    """Within the block, every packed part under ``root`` applies a weight decoded once on
    entry instead of decoding it on every forward (bit-identical outputs). The sequential
    pass runs each layer over every calibration window: decoding 3-bit codes cost ~2/3 of
    the matmul they feed. Costs one dense weight per part while open."""
    parts = [m for m in root.modules() if isinstance(m, Part) and m.decodes_per_call]
    try:
        for p in parts:
            p._decoded = p.dense()
        yield
    finally:
        for p in parts:
            p._decoded = None
