"""GPTQ: group-wise quantization with second-order error feedback from the layer's inputs."""

from __future__ import annotations

from compressor.core.method import Method, require_stat
from compressor.core.registry import register
from compressor.core.types import Compressed, Target
from compressor.methods.gptq.solver import gptq_quantize
from compressor.parts.base import CompressedLinear
from compressor.parts.quantized import UniformQuantPart

from .config import GPTQConfig


@register
class GPTQ(Method):
    name = "gptq"
    summary = "GPTQ: group-wise quantization with Hessian-based error compensation"
    Config = GPTQConfig
    needs = frozenset({"gram"})

    def compress(self, target: Target, cfg: GPTQConfig,
                 previous: CompressedLinear | None = None) -> Compressed:
        gram = require_stat(target, "gram")
        q, qinfo = gptq_quantize(target.weight, gram, cfg.bits, cfg.group_size, cfg.sym,
                                 cfg.percdamp, cfg.blocksize, cfg.act_order,
                                 static_groups=cfg.static_groups)
        out_f, in_f = target.weight.shape
        module = CompressedLinear(out_f, in_f, [UniformQuantPart.from_quant(q)], target.bias)
        return Compressed(module, {"bits": cfg.bits, "group_size": cfg.group_size,
                                   "sym": cfg.sym, "act_order": cfg.act_order,
                                   "static_groups": cfg.static_groups, **qinfo})
