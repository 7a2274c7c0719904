"""Round-to-nearest group-wise uniform quantization: the data-free quantization baseline."""

from __future__ import annotations

from pydantic import Field

from .. import quant
from ..modules.base import CompressedLinear
from ..modules.quantized import UniformQuantPart
from . import register
from .base import Compressed, Method, MethodConfig, Target


class RTNConfig(MethodConfig):
    bits: int = Field(4, ge=2, le=8, description="bits per weight code (2..8)")
    group_size: int = Field(128, description="input columns sharing one scale/zero; "
                                             "-1 = one group per row; a ragged last group is fine")
    sym: bool = Field(False, description="symmetric grid (no stored zero points) instead of "
                                         "asymmetric min/max")


@register
class RTN(Method):
    name = "rtn"
    summary = "round-to-nearest group-wise uniform quantization (data-free baseline)"
    Config = RTNConfig

    def compress(self, target: Target, cfg: RTNConfig,
                 previous: CompressedLinear | None = None) -> Compressed:
        q = quant.quantize_rtn(target.weight, cfg.bits, cfg.group_size, cfg.sym)
        out_f, in_f = target.weight.shape
        module = CompressedLinear(out_f, in_f, [UniformQuantPart.from_quant(q)], target.bias)
        return Compressed(module, {"bits": cfg.bits, "group_size": cfg.group_size,
                                   "sym": cfg.sym})
