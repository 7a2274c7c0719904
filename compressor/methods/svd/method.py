"""Plain truncated SVD: the baseline every low-rank method is judged against."""

from __future__ import annotations

from typing import Any

import torch

from compressor.core.registry import register
from compressor.core.types import Target
from compressor.methods.lowrank_family import LowRankMethod
from compressor.primitives.linalg import lowrank_factors, truncated_svd

from .config import SVDConfig


@register
class SVD(LowRankMethod):
    name = "svd"
    summary = "Truncated SVD of W (data-free baseline): W ≈ B·A at the rank the ratio allows."
    Config = SVDConfig

    def factorize(self, target: Target, cfg: Any, rank: int
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        U, S, Vh = truncated_svd(target.weight, rank, generator=target.generator,
                                 method=cfg.svd_method)
        A, B = lowrank_factors(U, S, Vh, torch.float32)
        return A, B, {}
