"""GPTQ: group-wise quantization with second-order error feedback from the layer's inputs."""

from __future__ import annotations

from compressor.core.method import Method, SharedInputCache, require_stat
from compressor.core.registry import register
from compressor.core.types import Compressed, Target
from compressor.methods.gptq.solver import GPTQHessian, gptq_quantize, prepare_hessian
from compressor.parts.base import CompressedLinear
from compressor.parts.quantized import UniformQuantPart

from .config import GPTQConfig


@register
class GPTQ(Method):
    name = "gptq"
    summary = "GPTQ: group-wise quantization with Hessian-based error compensation"
    Config = GPTQConfig
    needs = frozenset({"gram"})

    def __init__(self) -> None:
        super().__init__()
        self._cache = SharedInputCache()   # q/k/v (and gate/up) share one factorization

    def _hessian(self, gram, cfg: GPTQConfig, device) -> GPTQHessian:
        return self._cache.get(gram, (cfg.percdamp, cfg.act_order, cfg.max_retries, str(device)),
                               lambda: prepare_hessian(gram, cfg.percdamp, cfg.act_order,
                                                       cfg.max_retries, device))

    def true_sequential(self, cfg: GPTQConfig) -> bool:
        return cfg.true_sequential

    def compress(self, target: Target, cfg: GPTQConfig,
                 previous: CompressedLinear | None = None) -> Compressed:
        gram = require_stat(target, "gram")
        in_f = target.weight.shape[1]
        if tuple(gram.shape) != (in_f, in_f):
            raise ValueError(f"GPTQ: gram must be a finite ({in_f}, {in_f}) matrix, got "
                            f"{tuple(gram.shape)}; recollect calibration statistics.")
        hessian = self._hessian(gram, cfg, target.weight.device)
        q, qinfo = gptq_quantize(target.weight, None, cfg.bits, cfg.group_size, cfg.sym,
                                 cfg.percdamp, cfg.blocksize, cfg.act_order,
                                 max_retries=cfg.max_retries,
                                 static_groups=cfg.static_groups, grid=cfg.grid,
                                 mse_grid=cfg.mse_grid, mse_maxshrink=cfg.mse_maxshrink,
                                 mse_norm=cfg.mse_norm, mse_weighted=cfg.mse_weighted,
                                 hessian=hessian)
        out_f, in_f = target.weight.shape
        module = CompressedLinear(out_f, in_f, [UniformQuantPart.from_quant(q)], target.bias)
        return Compressed(module, {"bits": cfg.bits, "group_size": cfg.group_size,
                                   "sym": cfg.sym, "act_order": cfg.act_order,
                                   "static_groups": cfg.static_groups or cfg.act_order,
                                   "grid": cfg.grid, "mse_grid": cfg.mse_grid,
                                   "mse_weighted": cfg.mse_weighted, **qinfo})
