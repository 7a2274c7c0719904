"""Channel-sparse part (LOST): a few whole input channels kept as dense columns.

Stored: ``indices`` (c,) of the kept input channels (int16 when in < 32768) and
``columns`` (out, c). Applied as y = x[…, indices] · columnsᵀ: only c of the in features
are touched, so the cost is c/in of a dense layer's.
"""

from __future__ import annotations

from typing import Any

import torch

from compressor.primitives.sparse_coding import index_dtype

from .base import Part, register_part


@register_part
class ChannelSparsePart(Part):
    type_name = "channels"

    def __init__(self, indices: torch.Tensor, columns: torch.Tensor, in_features: int):
        out_features, c = columns.shape
        if indices.shape != (c,):
            raise ValueError(f"{tuple(indices.shape)} channel indices for {c} columns")
        super().__init__(out_features, in_features)
        self.channels = c
        self.register_buffer("indices", indices.to(index_dtype(in_features)).contiguous())
        self.register_buffer("columns", columns.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.index_select(-1, self.indices.long())
        return torch.nn.functional.linear(xs, self.columns.to(x.dtype))

    def dense(self) -> torch.Tensor:
        w = torch.zeros(self.out_features, self.in_features, dtype=torch.float32,
                        device=self.columns.device)
        w[:, self.indices.long()] = self.columns.float()
        return w

    def extra_spec(self) -> dict[str, Any]:
        return {"channels": self.channels}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], dtype: torch.dtype) -> "ChannelSparsePart":
        c = spec["channels"]
        return cls(torch.zeros(c, dtype=index_dtype(spec["in"])),
                   torch.zeros(spec["out"], c, dtype=dtype), spec["in"])
