"""FWSVD (Hsu et al. 2022): Fisher-weighted low-rank factorization.

Parameters with large Fisher information move the loss most, so minimize
‖I(W − BA)‖ with I = diag(sqrt(Σ Fisher along a row)) (or columns, or both), via the
truncated SVD of I·W and a division undoing I on the factor. With ``whiten`` the input side
is the calibration whitening instead (XᵀX = L Lᵀ): the SVD of D_F^½·W·L minimizes
tr(D_F ΔW G ΔWᵀ), undone with a division (rows) and a triangular solve (columns).
"""

from __future__ import annotations

from typing import Any

import torch

from compressor.core.method import require_stat
from compressor.core.registry import register
from compressor.core.types import Target
from compressor.methods.lowrank_family import LowRankMethod
from compressor.primitives.linalg import (
    two_sided_truncation,
    weighted_singular_values,
    weighted_truncation_rows_cols,
    whitening,
)

from .config import FWSVDConfig
from .weights import fisher_weights


@register
class FWSVD(LowRankMethod):
    name = "fwsvd"
    summary = ("Fisher-weighted SVD (Hsu et al. 2022): truncate I·W, I = sqrt of Fisher row sums; "
               "whiten=true: D_F^½·W·L, Fisher rows x calibration whitening.")
    Config = FWSVDConfig
    # only the row and column sums of the Fisher: (out + in) floats a target, not (out, in)
    needs = frozenset({"fisher_rows", "fisher_cols"})

    def needs_for(self, cfg: FWSVDConfig) -> frozenset[str]:
        if cfg.whiten:
            return frozenset({"fisher_rows", "gram"})
        return self.needs

    def _weights(self, target: Target, cfg: FWSVDConfig):
        dev = target.weight.device
        if cfg.whiten:
            rows, _, floored = fisher_weights(require_stat(target, "fisher_rows").to(dev),
                                              torch.zeros(0), "rows")
            L, winfo = whitening(require_stat(target, "gram").to(dev), cfg.percdamp)
            return rows, None, L, {"fisher_floored": floored, "damp": winfo["damp"],
                                   "dead_channels": winfo["dead"]}
        rows, cols, floored = fisher_weights(require_stat(target, "fisher_rows").to(dev),
                                             require_stat(target, "fisher_cols").to(dev),
                                             cfg.axis)
        return rows, cols, None, {"fisher_floored": floored}

    def spectrum(self, target: Target, cfg: FWSVDConfig) -> torch.Tensor:
        rows, cols, L, _ = self._weights(target, cfg)
        w = target.weight if cols is None else target.weight * cols.to(target.weight.dtype)[None, :]
        return weighted_singular_values(w, rows, L)

    def factorize(self, target: Target, cfg: Any, rank: int
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        rows, cols, L, winfo = self._weights(target, cfg)
        if cfg.whiten:
            A, B = two_sided_truncation(target.weight, rows, L, rank,
                                        generator=target.generator, method=cfg.svd_method)
        else:
            A, B = weighted_truncation_rows_cols(target.weight, rows, cols, rank=rank,
                                                 generator=target.generator,
                                                 method=cfg.svd_method)
        return A, B, {"axis": cfg.axis, "whiten": cfg.whiten, **winfo}
