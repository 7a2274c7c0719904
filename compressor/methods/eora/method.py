"""EoRA stage: add a low-rank path that compensates the previous stage's error.

The previous stage (a quantizer, a pruner, an SVD) leaves Ŵ; this stage factors
ΔW = W − Ŵ in the eigenspace of the layer's inputs (see factors.py) and serves
Ŵx + B(Ax). The earlier parts are kept untouched, so the output is the previous layer plus
one part: a float low-rank path, or a quantized one when lowrank_bits is set.
"""

from __future__ import annotations

import compressor.methods.eora.factors as eora
from compressor.core.measures import output_error, relative_output_error
from compressor.core.method import Method, SharedInputCache, require_stat
from compressor.core.registry import register
from compressor.core.types import Compressed, Target
from compressor.parts.base import CompressedLinear
from compressor.parts.lowrank import LowRankPart
from compressor.parts.qlowrank import QuantLowRankPart
from compressor.primitives.linalg import check_rank

from .config import EoraConfig


@register
class EoRA(Method):
    name = "eora"
    summary = ("Low-rank compensation of the previous stage's error in the eigenspace of the "
               "layer inputs (EoRA); put a base stage first, e.g. --base gptq. Training-free; "
               "the paper notes the path is a good start for fine-tuning: --heal-steps N "
               "trains it (heal stage).")
    Config = EoraConfig
    needs = frozenset({"gram"})
    uses_previous = True

    def __init__(self) -> None:
        super().__init__()
        self._cache = SharedInputCache()   # q/k/v (and gate/up) share one eigendecomposition

    def _eigen(self, gram):
        return self._cache.get(gram, None, lambda: eora.gram_eigen(gram))

    def compress(self, target: Target, cfg: EoraConfig,
                 previous: CompressedLinear | None = None) -> Compressed:
        if previous is None:   # a precondition of the math; recipes order stages in core/stage_rules.py
            raise ValueError("eora compensates the previous stage's output: give it one (a base "
                             "stage before eora)")
        gram = require_stat(target, "gram")
        m, n = target.weight.shape
        check_rank(m, n, cfg.rank, target.name)
        w = target.weight.float()
        delta = w - previous.dense_weight().to(w.device)
        if cfg.compensation == "eora":
            a, b, finfo = eora.eora_factors(delta, gram, cfg.rank, eig_floor=cfg.eig_floor,
                                            eigen=self._eigen(gram))
        else:
            a, b, finfo = eora.svd_compensation(delta, cfg.rank)
        if cfg.lowrank_bits is None:
            part = LowRankPart(a.to(target.dtype), b.to(target.dtype))
        else:
            part = QuantLowRankPart.from_factors(a, b, cfg.lowrank_bits, cfg.lowrank_group_size)
        # Errors of what is actually stored (dtype cast / quantized factors included).
        ref = output_error(w, gram)
        before = relative_output_error(delta, w, gram, ref) ** 2
        after = relative_output_error(delta - part.dense().to(delta.device), w, gram, ref) ** 2
        bias = previous.bias if previous.bias is not None else target.bias
        module = CompressedLinear(m, n, list(previous.parts) + [part], bias)
        info = {"rank": cfg.rank, "compensation": cfg.compensation,
                "eig_floored": finfo.get("eig_floored", 0),
                "output_error_before": before, "output_error_after": after,
                "lowrank_bits": cfg.lowrank_bits,
                "lowrank_bytes": part.stored_bytes()}
        if "fallback" in finfo:
            info["eig_fallback"] = finfo["fallback"]
        return Compressed(module, info)
