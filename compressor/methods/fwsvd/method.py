"""FWSVD (Hsu et al. 2022): Fisher-weighted low-rank factorization.

Parameters with large Fisher information move the loss most, so minimize
‖I(W − BA)‖ with I = diag(sqrt(Σ Fisher along a row)) (or columns, or both), via the
truncated SVD of I·W and a division undoing I on the factor.
"""

from __future__ import annotations

from typing import Any

import torch

from compressor.core.method import require_stat
from compressor.core.registry import register
from compressor.core.types import Target
from compressor.methods.lowrank_family import LowRankMethod
from compressor.primitives.linalg import weighted_truncation_rows_cols

from .config import FWSVDConfig
from .weights import fisher_weights


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
