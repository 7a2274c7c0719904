"""Keep the weight: a plan that must spend 16 bits on a matrix says so with this entry."""

from __future__ import annotations

from compressor.core.method import Method
from compressor.core.registry import register
from compressor.core.types import Compressed, Target
from compressor.parts.base import CompressedLinear
from compressor.parts.lowrank import DensePart

from .config import DenseConfig


@register
class Dense(Method):
    name = "dense"
    summary = ("keep the matrix uncompressed in the storage dtype (the plan menu's "
               "16-bit entry)")
    Config = DenseConfig

    def compress(self, target: Target, cfg: DenseConfig,
                 previous: CompressedLinear | None = None) -> Compressed:
        m, n = target.weight.shape
        part = DensePart(target.weight.detach().to(target.dtype, copy=True))
        return Compressed(CompressedLinear(m, n, [part], target.bias), {})
