"""GWQ's math: pick the outliers, quantize the rest with them excluded, keep their values."""

from __future__ import annotations

from typing import Any

import torch

from compressor.methods.gptq.solver import gptq_quantize
from compressor.primitives.grids import UniformQ, dequantize, quantize_rtn

from .config import GWQConfig


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
            raise ValueError("gwq_quantize with inner='gptq' needs the layer's input Gram matrix")
        q, info = gptq_quantize(w, gram, cfg.bits, cfg.group_size, cfg.sym,
                                percdamp=cfg.percdamp, mask=m)
    else:
        q = quantize_rtn(w, cfg.bits, cfg.group_size, cfg.sym, mask=m)
    values = outlier_values(w, q, mask)
    return q, mask, values, {**info, "outliers": int(mask.sum())}
