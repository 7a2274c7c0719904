"""Magnitude / Wanda pruning, unstructured (per row) or N:M, stored as a sparse part.

Both patterns are stored as CSR (values + int16 column indices) so bytes on disk are
honest for unstructured sparsity. For N:M that format costs as much as dense at 2:4 in
16 bit; a dedicated N:M part (values + 2-bit in-group positions) would be the compact one.
"""

from __future__ import annotations

from compressor.core.method import Method, require_stat
from compressor.core.registry import register
from compressor.core.types import Compressed, Target
from compressor.parts.base import CompressedLinear
from compressor.parts.sparse import SparsePart
from compressor.primitives.masks import magnitude_mask, n_m_mask

from .config import PruneConfig


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
            xnorm = require_stat(target, "gram").diagonal().clamp(min=0).sqrt().to(w.device, w.dtype)
            score = score * xnorm[None, :]
        if cfg.pattern == "unstructured":
            mask = magnitude_mask(score, cfg.sparsity)
        else:
            n, m = (int(v) for v in cfg.pattern.split(":"))
            mask = n_m_mask(w, n, m, score=score)
        out_f, in_f = w.shape
        part = SparsePart.from_dense(w, mask, target.dtype)
        module = CompressedLinear(out_f, in_f, [part], target.bias)
        achieved = 1.0 - float(mask.sum()) / mask.numel()
        return Compressed(module, {"sparsity": round(achieved, 6), "pattern": cfg.pattern,
                                   "score": cfg.score})
