"""LQ-LoRA's bit allocation: the (NF bits, block size) menu, what each costs, and the ILP.

config_bits counts what each configuration costs per weight from the tensors the parts
actually store; ilp_allocate picks one configuration per matrix minimizing the summed error
under a global bits-per-weight budget, a multiple-choice knapsack solved exactly as a binary
ILP by HiGHS (primitives/knapsack.py, shared with the plan method).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .decompose import Quantizer


@dataclass(frozen=True)
class NFConfig:
    """One quantization choice: NF code width and block size (absmax double-quantized)."""

    bits: int
    block_size: int
    double_quant: bool = True

    @property
    def name(self) -> str:
        return f"nf{self.bits}-b{self.block_size}" + ("-dq" if self.double_quant else "")


DEFAULT_NF_BITS = (2, 3, 4, 8)


DEFAULT_BLOCK_SIZES = (16, 32, 64, 128, 256)


def nf_quantizer(cfg: NFConfig) -> Quantizer:
    """The ``quantizer`` argument of ``lq_decompose`` for one NF configuration."""
    from compressor.primitives.grids import dequantize_nf, quantize_nf

    def run(x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        q = quantize_nf(x, bits=cfg.bits, block_size=cfg.block_size,
                              double_quant=cfg.double_quant)
        return dequantize_nf(q), q
    return run


def nf_gptq_quantizer(cfg: NFConfig, hessian: Any) -> Quantizer:
    """``nf_quantizer`` with GPTQ's rounding: the same block scales (absmax of x, double
    quantized), but each code chosen column by column with the rounding errors pushed onto
    the columns not yet rounded through the inverse Hessian of the layer's inputs
    (``hessian``: gptq.solver.prepare_hessian of the Gram). Same storage, lower output error."""
    from dataclasses import replace

    from compressor.methods.gptq.solver import gptq_round
    from compressor.primitives.grids import dequantize_nf, nf_levels, quantize_nf

    def run(x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        q = quantize_nf(x, bits=cfg.bits, block_size=cfg.block_size,
                        double_quant=cfg.double_quant)
        levels = nf_levels(cfg.bits, x.device)
        mids = (levels[1:] + levels[:-1]) / 2
        n = x.numel()
        scale = q.absmax.float().repeat_interleave(cfg.block_size)[:n].view(x.shape)
        safe = torch.where(scale != 0, scale, torch.ones_like(scale))

        def round_column(j: int, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            c = torch.bucketize(v / safe[:, j], mids)
            return c.to(torch.uint8), levels[c] * scale[:, j]
        q = replace(q, codes=gptq_round(x, hessian, round_column))
        return dequantize_nf(q), q
    return run


def candidate_configs(nf_bits: Sequence[int] = DEFAULT_NF_BITS,
                      block_sizes: Sequence[int] = DEFAULT_BLOCK_SIZES,
                      double_quant: bool = True) -> list[NFConfig]:
    """The LQ-LoRA menu: NF{2,3,4,8} × first-level blocks {16..256}, 8-bit second-level scales.

    The paper searches b0 ∈ {2,3,4,8} and B0 ∈ {8,16,32,64} with 8-bit double quantization
    over a few second-level block sizes; here the second level is whatever
    ``quantize_nf(double_quant=True)`` uses (one choice), and the first-level blocks
    span 16..256 so low budgets (large blocks) stay reachable.
    """
    return [NFConfig(b, bs, double_quant) for b in nf_bits for bs in block_sizes]


def _nf_part_bytes(cfg: NFConfig, m: int, n: int) -> int:
    """Bytes the NF part would store for an m×n matrix — from the part itself.

    One source of truth: the part is built with ``NFQuantPart.from_spec`` (the same path a
    checkpoint load takes) on the meta device, so no memory is touched, and its buffers are
    counted. A change in the part's layout changes this count with it.
    """
    from compressor.parts.quantized import NFQuantPart
    with torch.device("meta"):
        part = NFQuantPart.from_spec(_nf_spec(cfg, m, n), torch.float16)
    return part.stored_bytes()


def _nf_spec(cfg: NFConfig, m: int, n: int) -> dict[str, Any]:
    return {"type": "nf", "out": m, "in": n, "bits": cfg.bits,
            "block_size": cfg.block_size, "double_quant": cfg.double_quant}


def config_bits(cfg: NFConfig, m: int, n: int, rank: int,
                lowrank_dtype: torch.dtype = torch.float16) -> float:
    """Bits per weight of Q (codes + absmax + double-quant) plus the rank-r factors stored in
    ``lowrank_dtype`` (the model's storage dtype: 16 bit for half-precision checkpoints)."""
    from compressor.parts.lowrank import LowRankPart
    nbytes = _nf_part_bytes(cfg, m, n)
    if rank > 0:
        with torch.device("meta"):
            low = LowRankPart.from_spec({"type": "lowrank", "out": m, "in": n, "rank": rank},
                                        lowrank_dtype)
        nbytes += low.stored_bytes()
    return 8.0 * nbytes / (m * n)
