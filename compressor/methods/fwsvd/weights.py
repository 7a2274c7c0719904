"""Fisher row / column weights for FWSVD: square roots of the Fisher sums, zeros floored."""

from __future__ import annotations

import torch

from compressor.primitives.linalg import positive_weights


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
