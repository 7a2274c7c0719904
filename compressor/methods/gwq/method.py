"""GWQ (Shao et al. 2024, "GWQ: Gradient-Aware Weight Quantization for LLMs").

The few weights whose loss gradient is largest matter most, so keep them exactly: score every
weight by |∂L/∂W| (mean over a few calibration samples), keep the top outlier_frac in 16 bit
as a sparse part, and quantize the rest group-wise with those outliers excluded from the
scale/zero statistics (so one huge weight does not stretch its group's grid).

Layout: CompressedLinear([UniformQuantPart, SparsePart]). The quantizer gives the outlier
positions the zero-point code, so the quant part is exactly 0 there, and the sparse part holds
the value to keep: the original weight for the "rtn" inner quantizer, GPTQ's
error-compensated weight for "gptq" (which propagates zero error from kept entries, as SpQR
does). With outlier_score="magnitude" (top |W|) it is the classic outlier-aware baseline that
GWQ is compared against.
"""

from __future__ import annotations

import torch

from compressor.core.method import Method, require_stat
from compressor.core.registry import register
from compressor.core.types import Compressed, Target
from compressor.errors import UserError
from compressor.parts.base import CompressedLinear, Part
from compressor.parts.quantized import UniformQuantPart
from compressor.parts.sparse import SparsePart

from .config import GWQConfig
from .outliers import gwq_quantize, outlier_dtype


def _score(target: Target, cfg: GWQConfig) -> torch.Tensor:
    w = target.weight
    if cfg.outlier_score == "magnitude":
        return w.abs()
    g = require_stat(target, "grad_absmean")
    if tuple(g.shape) != tuple(w.shape):
        raise UserError(f"{target.name}: gradient statistics are {tuple(g.shape)}, the weight "
                        f"is {tuple(w.shape)}; the gradient file belongs to another model: "
                        "recompute it")
    g = g.to(device=w.device, dtype=torch.float32)
    if not bool(torch.isfinite(g).all()):
        raise UserError(f"{target.name}: gradient statistics contain NaN/inf; recompute them "
                        "in float32")
    return g.abs()


@register
class GWQ(Method):
    name = "gwq"
    summary = ("Gradient-aware quantization (Shao et al. 2024): top |dL/dW| weights kept in "
               "16 bit as sparse outliers, the rest group-quantized (RTN or GPTQ).")
    Config = GWQConfig
    needs = frozenset({"grad_absmean", "gram"})  # union; needs_for gives the exact set

    @classmethod
    def needs_for(cls, cfg: GWQConfig) -> frozenset[str]:
        """Only what this config uses: gradients for gradient scoring, Gram for GPTQ."""
        out = set()
        if cfg.outlier_score == "gradient" and cfg.outlier_frac > 0:
            out.add("grad_absmean")
        if cfg.inner == "gptq":
            out.add("gram")
        return frozenset(out)

    def compress(self, target: Target, cfg: GWQConfig,
                 previous: CompressedLinear | None = None) -> Compressed:
        w = target.weight.float()
        score = _score(target, cfg) if cfg.outlier_frac > 0 else w.abs()
        q, mask, values, info = gwq_quantize(w, score, cfg,
                                             require_stat(target, "gram") if cfg.inner == "gptq" else None)
        parts: list[Part] = [UniformQuantPart.from_quant(q)]
        if info["outliers"] > 0:
            vdtype = outlier_dtype(target.dtype, values)
            parts.append(SparsePart.from_dense(values, mask, vdtype))
            info["outlier_dtype"] = str(vdtype).removeprefix("torch.")
        out_f, in_f = w.shape
        module = CompressedLinear(out_f, in_f, parts, target.bias)
        info.update({
            "bits": cfg.bits, "group_size": cfg.group_size, "sym": cfg.sym,
            "outlier_frac": info["outliers"] / w.numel(), "outlier_score": cfg.outlier_score,
            "inner": cfg.inner,
        })
        return Compressed(module, info)
