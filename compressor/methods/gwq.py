"""GWQ (Shao et al. 2024, "GWQ: Gradient-Aware Weight Quantization for LLMs").

The few weights whose loss gradient is largest matter most, so keep them exactly: score every
weight by |∂L/∂W| (mean over a few calibration samples), keep the top ``outlier_frac`` in 16 bit
as a sparse part, and quantize the rest group-wise with those outliers excluded from the
scale/zero statistics (so one huge weight does not stretch its group's grid).

Layout: CompressedLinear([UniformQuantPart, SparsePart]). The quantizer gives the outlier
positions the zero-point code, so the quant part is exactly 0 there, and the sparse part holds
the value to keep minus that (i.e. the value itself): the original weight for the "rtn" inner
quantizer, GPTQ's error-compensated weight for "gptq" (which propagates zero error from kept
entries, as SpQR does). With ``outlier_score="magnitude"`` (top |W|) it is the classic
outlier-aware baseline that GWQ is compared against.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ..errors import UserError
from ..modules.base import CompressedLinear, Part
from ..modules.quantized import UniformQuantPart
from ..modules.sparse import SparsePart
from ..quant import UniformQ, dequantize, gptq_quantize, quantize_rtn
from . import register
from .base import Compressed, Method, MethodConfig, Target


class GWQConfig(MethodConfig):
    bits: int = Field(3, ge=2, le=8, description="Bits per quantized (non-outlier) weight, 2..8.")
    group_size: int = Field(128, description=(
        "Input columns per quantization group (scale and zero each); <= 0 means one group "
        "per row."))
    sym: bool = Field(False, description="Symmetric grid (fixed zero point) instead of min/max.")
    outlier_frac: float = Field(0.01, ge=0.0, lt=1.0, description=(
        "Fraction of each matrix's weights kept in 16 bit as sparse outliers (paper: 0.01). "
        "0 gives the plain inner quantizer."))
    outlier_score: Literal["gradient", "magnitude"] = Field("gradient", description=(
        "How outliers are chosen: 'gradient' = largest mean |dL/dW| (GWQ), 'magnitude' = "
        "largest |W| (the baseline GWQ is compared against)."))
    inner: Literal["rtn", "gptq"] = Field("rtn", description=(
        "Quantizer for the non-outlier weights: round-to-nearest, or GPTQ (needs the "
        "layer's input Gram matrix)."))
    percdamp: float = Field(0.01, gt=0.0, description=(
        "GPTQ damping, as a fraction of the mean Hessian diagonal (inner='gptq' only)."))


def outlier_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """bool mask (shape of ``score``), True at the exact top-k entries of ``score``."""
    mask = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    if k > 0:
        mask[score.reshape(-1).topk(k, sorted=False).indices] = True
    return mask.view(score.shape)


def outlier_values(w: torch.Tensor, q: UniformQ, mask: torch.Tensor) -> torch.Tensor:
    """Dense (out, in) residual at ``mask``: the value to keep minus what the quant part gives.

    The value to keep is ``q.outliers`` when the quantizer provides it (GPTQ's updated
    weights), else the original weight; the quant part is 0 there (zero-point code), but the
    subtraction keeps the sum right for any grid.
    """
    keep = q.outliers if q.outliers is not None else w
    return torch.where(mask, keep - dequantize(q), torch.zeros_like(w))


def outlier_dtype(dtype: torch.dtype, values: torch.Tensor) -> torch.dtype:
    """16-bit storage for outliers, as in the paper: the model's dtype when it is 16-bit,
    else float16, or bfloat16 when a value would overflow float16's range."""
    if dtype in (torch.float16, torch.bfloat16):
        return dtype
    return torch.float16 if float(values.abs().max()) <= 65504.0 else torch.bfloat16


def gwq_quantize(w: torch.Tensor, score: torch.Tensor, cfg: GWQConfig,
                 gram: torch.Tensor | None = None
                 ) -> tuple[UniformQ, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Pure math: returns (quantized base, outlier mask, dense outlier residual, info)."""
    k = int(round(cfg.outlier_frac * w.numel()))
    mask = outlier_mask(score, k)
    m = mask if k > 0 else None
    info: dict[str, Any] = {}
    if cfg.inner == "gptq":
        if gram is None:
            raise UserError("gwq with inner='gptq' needs the layer's input Gram matrix; "
                            "it was not collected (a pipeline bug: check needs_for)")
        q, info = gptq_quantize(w, gram, cfg.bits, cfg.group_size, cfg.sym,
                                percdamp=cfg.percdamp, mask=m)
    else:
        q = quantize_rtn(w, cfg.bits, cfg.group_size, cfg.sym, mask=m)
    values = outlier_values(w, q, mask)
    return q, mask, values, {**info, "outliers": int(mask.sum())}


def _score(target: Target, cfg: GWQConfig) -> torch.Tensor:
    w = target.weight
    if cfg.outlier_score == "magnitude":
        return w.abs()
    g = target.stats.grad_absmean
    if g is None:
        raise UserError(f"gwq (outlier_score='gradient') needs gradient statistics for "
                        f"{target.name}, none were collected; use outlier_score='magnitude' "
                        "or let the pipeline run the gradient pass")
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
        q, mask, values, info = gwq_quantize(w, score, cfg, target.stats.gram)
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
            "bits_per_weight": round(8 * sum(p.stored_bytes() for p in parts) / w.numel(), 4),
        })
        return Compressed(module, info)
