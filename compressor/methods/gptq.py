"""GPTQ: group-wise quantization with second-order error feedback from the layer's inputs."""

from __future__ import annotations

from pydantic import Field

from .. import quant
from ..errors import UserError
from ..modules.base import CompressedLinear
from ..modules.quantized import UniformQuantPart
from . import register
from .base import Compressed, Method, Target
from .rtn import RTNConfig


class GPTQConfig(RTNConfig):
    """RTN's grid options plus GPTQ's own."""

    percdamp: float = Field(0.01, gt=0, description="Hessian damping as a fraction of its mean "
                                                    "diagonal (raised 10x on Cholesky failure)")
    blocksize: int = Field(128, ge=1, description="columns per lazy-update block (speed only)")
    act_order: bool = Field(False, description="quantize columns by descending Hessian diagonal "
                                               "(static groups keep groups contiguous)")
    static_groups: bool = Field(False, description=(
        "compute every group's grid once from the original weights (llm-compressor's way) "
        "instead of from the updated weights when the group starts (the paper's)"))


@register
class GPTQ(Method):
    name = "gptq"
    summary = "GPTQ: group-wise quantization with Hessian-based error compensation"
    Config = GPTQConfig
    needs = frozenset({"gram"})

    def compress(self, target: Target, cfg: GPTQConfig,
                 previous: CompressedLinear | None = None) -> Compressed:
        gram = target.stats.gram
        if gram is None:
            raise UserError(f"gptq needs calibration statistics (gram) for {target.name}; "
                            "run it with calibration data.")
        q, qinfo = quant.gptq_quantize(target.weight, gram, cfg.bits, cfg.group_size, cfg.sym,
                                       cfg.percdamp, cfg.blocksize, cfg.act_order,
                                       static_groups=cfg.static_groups)
        out_f, in_f = target.weight.shape
        module = CompressedLinear(out_f, in_f, [UniformQuantPart.from_quant(q)], target.bias)
        return Compressed(module, {"bits": cfg.bits, "group_size": cfg.group_size,
                                   "sym": cfg.sym, "act_order": cfg.act_order,
                                   "static_groups": cfg.static_groups, **qinfo})
