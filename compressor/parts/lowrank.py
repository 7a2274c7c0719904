"""Low-rank factor part: W ≈ B·A with A (rank × in), B (out × rank); applied as B(Ax)."""

from __future__ import annotations

from typing import Any

import torch

from .base import Part, register_part


@register_part
class LowRankPart(Part):
    type_name = "lowrank"

    def __init__(self, A: torch.Tensor, B: torch.Tensor):
        out_features, rank = B.shape
        rank_a, in_features = A.shape
        if rank != rank_a:
            raise ValueError(f"factor ranks differ: A has {rank_a} rows, B has {rank} columns")
        super().__init__(out_features, in_features)
        self.rank = rank
        self.register_buffer("A", A.contiguous())
        self.register_buffer("B", B.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(torch.nn.functional.linear(x, self.A.to(x.dtype)),
                                          self.B.to(x.dtype))

    def dense(self) -> torch.Tensor:
        return self.B.float() @ self.A.float()

    def extra_spec(self) -> dict[str, Any]:
        # The factors' own dtype: a method may store them narrower than the checkpoint's
        # storage dtype (LQ-LoRA's 16-bit factors in a float32 model); a load restores it.
        return {"rank": self.rank, "dtype": str(self.A.dtype).removeprefix("torch.")}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], dtype: torch.dtype) -> "LowRankPart":
        dtype = getattr(torch, spec["dtype"]) if "dtype" in spec else dtype
        return cls(torch.zeros(spec["rank"], spec["in"], dtype=dtype),
                   torch.zeros(spec["out"], spec["rank"], dtype=dtype))


@register_part
class DensePart(Part):
    """A plain dense weight (e.g. a pruned matrix kept dense, or an N-LRC matrix left alone)."""

    type_name = "dense"

    def __init__(self, weight: torch.Tensor):
        super().__init__(*weight.shape)
        self.register_buffer("weight", weight.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight.to(x.dtype))

    def dense(self) -> torch.Tensor:
        return self.weight.float()

    @classmethod
    def from_spec(cls, spec: dict[str, Any], dtype: torch.dtype) -> "DensePart":
        return cls(torch.zeros(spec["out"], spec["in"], dtype=dtype))
