"""Magnitude / Wanda pruning, unstructured (per row) or N:M, stored as a sparse part.

Both patterns are stored as CSR (values + int16 column indices) so bytes on disk are
honest for unstructured sparsity. For N:M that format costs as much as dense at 2:4 in
16 bit; a dedicated N:M part (values + 2-bit in-group positions) would be the compact one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .. import quant
from ..errors import UserError
from ..modules.base import CompressedLinear
from ..modules.sparse import SparsePart
from . import register
from .base import Compressed, Method, MethodConfig, Target


class PruneConfig(MethodConfig):
    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="fraction of weights removed, per "
                                                              "row (ignored for N:M patterns)")
    pattern: Literal["unstructured", "2:4", "4:8"] = Field(
        "unstructured", description="unstructured, or keep N of every M consecutive inputs")
    score: Literal["magnitude", "wanda"] = Field(
        "magnitude", description="rank weights by |W|, or by Wanda's |W|·‖x‖ (needs calibration)")


@register
class Prune(Method):
    name = "prune"
    summary = "magnitude or Wanda pruning, unstructured (per row) or 2:4 / 4:8"
    Config = PruneConfig
    needs = frozenset({"gram"})   # only read when score == "wanda"

    def compress(self, target: Target, cfg: PruneConfig,
                 previous: CompressedLinear | None = None) -> Compressed:
        w = target.weight
        score = w.abs()
        if cfg.score == "wanda":
            if target.stats.gram is None:
                raise UserError(f"prune score=wanda needs calibration statistics for "
                                f"{target.name}; use score=magnitude or give calibration data.")
            xnorm = target.stats.gram.diagonal().clamp(min=0).sqrt().to(w.device, w.dtype)
            score = score * xnorm[None, :]
        if cfg.pattern == "unstructured":
            mask = quant.magnitude_mask(score, cfg.sparsity)
        else:
            n, m = (int(v) for v in cfg.pattern.split(":"))
            mask = quant.n_m_mask(w, n, m, score=score)
        out_f, in_f = w.shape
        part = SparsePart.from_dense(w, mask, target.dtype)
        module = CompressedLinear(out_f, in_f, [part], target.bias)
        achieved = 1.0 - float(mask.sum()) / mask.numel()
        return Compressed(module, {"sparsity": round(achieved, 6), "pattern": cfg.pattern,
                                   "score": cfg.score})
