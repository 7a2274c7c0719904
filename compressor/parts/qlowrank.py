"""Low-rank path with quantized factors: W_lr = dequant(B)·dequant(A), applied as B(Ax).

EoRA's compensation path can itself be stored in a few bits (``--lowrank-bits``). Each
factor is a group-wise uniform quantized matrix, so the part holds two ``UniformQuantPart``
children (A: rank × in, B: out × rank) and reuses their packing, scales and dequantization;
its state_dict keys are ``qa.*`` and ``qb.*``.
"""

from __future__ import annotations

from typing import Any

import torch

from compressor.primitives.grids import UniformQ

from .base import Part, register_part
from .quantized import UniformQuantPart


@register_part
class QuantLowRankPart(Part):
    type_name = "qlowrank"

    def __init__(self, qa: UniformQuantPart, qb: UniformQuantPart):
        rank, in_features = qa.out_features, qa.in_features
        out_features, rank_b = qb.out_features, qb.in_features
        if rank != rank_b:
            raise ValueError(f"factor ranks differ: A has {rank} rows, B has {rank_b} columns")
        if (qa.bits, qa.group_size, qa.sym) != (qb.bits, qb.group_size, qb.sym):
            raise ValueError("both factors must share bits, group_size and sym")
        super().__init__(out_features, in_features)
        self.rank = rank
        self.qa = qa
        self.qb = qb

    @classmethod
    def from_quant(cls, qa: UniformQ, qb: UniformQ) -> "QuantLowRankPart":
        """From the quantized factors A (rank, in) and B (out, rank)."""
        return cls(UniformQuantPart.from_quant(qa), UniformQuantPart.from_quant(qb))

    @classmethod
    def from_factors(cls, a: torch.Tensor, b: torch.Tensor, bits: int, group_size: int
                     ) -> "QuantLowRankPart":
        """Group-wise RTN codes of A (rank, in) and B (out, rank), groups along each factor's
        input axis, after moving the scale between them so each rank-1 term's A row and B
        column have the same norm (B·A unchanged; neither factor's groups then mix columns
        of very different size)."""
        from compressor.primitives.grids import quantize_rtn
        a, b = a.float(), b.float()
        na, nb = a.norm(dim=1), b.norm(dim=0)
        d = torch.where((na > 0) & (nb > 0), (na / nb.clamp_min(1e-30)).sqrt(), torch.ones_like(na))
        a, b = a / d[:, None], b * d[None, :]
        return cls.from_quant(quantize_rtn(a, bits, group_size=group_size),
                              quantize_rtn(b, bits, group_size=group_size))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantized (A, B), float32 (e.g. for a LoRA adapter export)."""
        return self.qa.dense(), self.qb.dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.qb(self.qa(x))

    def dense(self) -> torch.Tensor:
        a, b = self.factors()
        return b @ a

    def extra_spec(self) -> dict[str, Any]:
        return {"rank": self.rank, "bits": self.qa.bits, "group_size": self.qa.group_size,
                "sym": self.qa.sym}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], dtype: torch.dtype) -> "QuantLowRankPart":
        common = {"type": UniformQuantPart.type_name, "bits": spec["bits"],
                  "group_size": spec["group_size"], "sym": spec["sym"]}
        qa = UniformQuantPart.from_spec({**common, "out": spec["rank"], "in": spec["in"]}, dtype)
        qb = UniformQuantPart.from_spec({**common, "out": spec["out"], "in": spec["rank"]}, dtype)
        return cls(qa, qb)
