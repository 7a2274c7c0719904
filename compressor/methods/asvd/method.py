"""ASVD (Yuan et al. 2023): activation-aware SVD.

Input channels with large activations matter more to the output, so truncate W·S with
S = diag(mean|x|^alpha) and undo S on the input factor. alpha = 0 is plain SVD.
"""

from __future__ import annotations

from typing import Any

import torch

from compressor.core.method import require_stat
from compressor.core.registry import register
from compressor.core.types import Target
from compressor.methods.lowrank_family import LowRankMethod
from compressor.primitives.linalg import positive_weights, weighted_truncation_rows_cols

from .config import ASVDConfig


@register
class ASVD(LowRankMethod):
    name = "asvd"
    summary = "Activation-aware SVD: truncate W·diag(mean|x|^alpha), then undo the scaling."
    Config = ASVDConfig
    needs = frozenset({"act_absmean"})

    def factorize(self, target: Target, cfg: Any, rank: int
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        absmean = require_stat(target, "act_absmean").to(target.weight.device)
        scale, floored = positive_weights(absmean.to(torch.float64).pow(cfg.alpha))
        A, B = weighted_truncation_rows_cols(target.weight, col_weights=scale, rank=rank,
                                             generator=target.generator,
                                             method=cfg.svd_method)
        return A, B, {"alpha": cfg.alpha, "floored_channels": floored}
