"""Whitened SVD (SVD-LLM style): truncate where the output error, not the weight error, is least.

‖(W − BA)X‖ = ‖(W − BA)L‖ with XᵀX = LLᵀ, so the truncated SVD of W·L, mapped back
through L⁻¹, is the best rank-k factorization for the calibration inputs.
"""

from __future__ import annotations

from typing import Any

import torch

from compressor.core.method import require_stat
from compressor.core.registry import register
from compressor.core.types import Target
from compressor.methods.lowrank_family import LowRankMethod
from compressor.primitives.linalg import (
    weighted_singular_values,
    whitened_truncation,
    whitening,
)

from .config import WhitenedSVDConfig


@register
class WhitenedSVD(LowRankMethod):
    name = "whitened-svd"
    summary = "SVD-LLM-style SVD of W·L (XᵀX = LLᵀ): minimizes the layer's output error."
    Config = WhitenedSVDConfig
    needs = frozenset({"gram"})

    def spectrum(self, target: Target, cfg: Any) -> torch.Tensor:
        """Singular values of W·L: what the whitened truncation cuts (WeLore must read these)."""
        L, _ = whitening(require_stat(target, "gram").to(target.weight.device), cfg.percdamp)
        return weighted_singular_values(target.weight, None, L)

    def factorize(self, target: Target, cfg: Any, rank: int
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        gram = require_stat(target, "gram").to(target.weight.device)
        L, winfo = whitening(gram, cfg.percdamp)
        A, B = whitened_truncation(target.weight, L, rank, generator=target.generator,
                                   method=cfg.svd_method)
        return A, B, {"damp": winfo["damp"], "damp_retries": winfo["retries"],
                      "whitening": winfo["method"], "eig_floor_count": winfo["floored"],
                      "dead_channels": winfo["dead"]}
