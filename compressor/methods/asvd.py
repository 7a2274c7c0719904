"""ASVD (Yuan et al. 2023): activation-aware SVD.

Input channels with large activations matter more to the output, so truncate W·S with
S = diag(mean|x|^alpha) and undo S on the input factor. alpha = 0 is plain SVD.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..linalg import positive_weights, weighted_truncation_rows_cols
from . import register
from .base import Target
from .lowrank_common import LowRankConfig, LowRankMethod, require_stat


class ASVDConfig(LowRankConfig):
    alpha: float = Field(0.5, ge=0.0, description=(
        "Exponent of the activation scaling S = mean|x|^alpha (0 = plain SVD; the ASVD "
        "paper uses 0.5)."))


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
