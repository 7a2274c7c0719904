"""Round-to-nearest group-wise uniform quantization: the data-free quantization baseline."""

from __future__ import annotations

from compressor.core.method import Method
from compressor.core.registry import register
from compressor.core.types import Compressed, Target
from compressor.parts.base import CompressedLinear
from compressor.parts.quantized import UniformQuantPart
from compressor.primitives.grids import quantize_rtn

from .config import RTNConfig


@register
class RTN(Method):
    name = "rtn"
    summary = "round-to-nearest group-wise uniform quantization (data-free baseline)"
    Config = RTNConfig

    def compress(self, target: Target, cfg: RTNConfig,
                 previous: CompressedLinear | None = None) -> Compressed:
        q = quantize_rtn(target.weight, cfg.bits, cfg.group_size, cfg.sym)
        out_f, in_f = target.weight.shape
        module = CompressedLinear(out_f, in_f, [UniformQuantPart.from_quant(q)], target.bias)
        return Compressed(module, {"bits": cfg.bits, "group_size": cfg.group_size,
                                   "sym": cfg.sym})
