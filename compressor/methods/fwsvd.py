"""FWSVD (Hsu et al. 2022): Fisher-weighted low-rank factorization.

Parameters with large Fisher information move the loss most, so minimize
‖I(W − BA)‖ with I = diag(sqrt(Σ Fisher along a row)) (or columns, or both), via the
truncated SVD of I·W and a division undoing I on the factor.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ..linalg import positive_weights, weighted_truncation_rows_cols
from . import register
from .base import Target
from .lowrank_common import LowRankConfig, LowRankMethod, require_stat


class FWSVDConfig(LowRankConfig):
    axis: Literal["rows", "cols", "both"] = Field("rows", description=(
        "Which Fisher sums weight the reconstruction: 'rows' (per output channel, as in "
        "the paper: I·W), 'cols' (per input channel: W·I) or 'both' (I_r·W·I_c)."))


def fisher_weights(row_sums: torch.Tensor, col_sums: torch.Tensor, axis: str
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """(row weights, col weights, floored count): sqrt of the Fisher row / column sums,
    zeros floored."""
    rows = cols = None
    floored = 0
    if axis in ("rows", "both"):
        rows, k = positive_weights(row_sums.to(torch.float64).clamp_min(0).sqrt())
        floored += k
    if axis in ("cols", "both"):
        cols, k = positive_weights(col_sums.to(torch.float64).clamp_min(0).sqrt())
        floored += k
    return rows, cols, floored


@register
class FWSVD(LowRankMethod):
    name = "fwsvd"
    summary = "Fisher-weighted SVD (Hsu et al. 2022): truncate I·W, I = sqrt of Fisher row sums."
    Config = FWSVDConfig
    # only the row and column sums of the Fisher: (out + in) floats a target, not (out, in)
    needs = frozenset({"fisher_rows", "fisher_cols"})

    def factorize(self, target: Target, cfg: Any, rank: int
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        dev = target.weight.device
        rows, cols, floored = fisher_weights(require_stat(target, "fisher_rows").to(dev),
                                             require_stat(target, "fisher_cols").to(dev),
                                             cfg.axis)
        A, B = weighted_truncation_rows_cols(target.weight, rows, cols, rank=rank,
                                             generator=target.generator,
                                             method=cfg.svd_method)
        return A, B, {"axis": cfg.axis, "fisher_floored": floored}
