"""Plain truncated SVD: the baseline every low-rank method is judged against."""

from __future__ import annotations

from typing import Any

import torch

from ..linalg import lowrank_factors, truncated_svd
from . import register
from .base import Target
from .lowrank_common import LowRankConfig, LowRankMethod


@register
class SVD(LowRankMethod):
    name = "svd"
    summary = "Truncated SVD of W (data-free baseline): W ≈ B·A at the rank the ratio allows."
    Config = LowRankConfig

    def factorize(self, target: Target, cfg: Any, rank: int
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        U, S, Vh = truncated_svd(target.weight, rank, generator=target.generator,
                                 method=cfg.svd_method)
        A, B = lowrank_factors(U, S, Vh, torch.float32)
        return A, B, {}
