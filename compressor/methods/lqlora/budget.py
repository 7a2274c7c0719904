"""LQ-LoRA's bit allocation: the (NF bits, block size) menu, what each costs, and the ILP.

config_bits counts what each configuration costs per weight from the tensors the parts
actually store; ilp_allocate picks one configuration per matrix minimizing the summed error
under a global bits-per-weight budget, a multiple-choice knapsack solved exactly as a binary
ILP by HiGHS (primitives/knapsack.py, shared with the plan method).
"""

from __future__ import annotations

from collections.abc import Callable
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
    many = nf_gptq_quantize_all([cfg], hessian)
    return lambda x: many(x)[0]


# rows of the stacked weight one GPTQ pass of nf_gptq_quantize_all rounds at a time (configs x
# out features): bounds its three (rows, in) float32 tables to ~0.8 GB on a 7B-class matrix
_STACK_ELEMENTS = 1 << 26


def nf_gptq_quantize_all(cfgs: Sequence[NFConfig], hessian: Any
                         ) -> Callable[[torch.Tensor], list[tuple[torch.Tensor, Any]]]:
    """x -> [(dequantized, NFQ) per configuration], each exactly what ``nf_gptq_quantizer``
    gives, from one GPTQ pass over the configurations' copies of x stacked as rows.

    GPTQ's error feedback is row-independent under one inverse Hessian, so the copies do not
    interact; stacking turns one Python column loop per configuration into one for all of
    them (the plan prices a whole menu on the same matrix). Configurations sharing a code
    width share one bucketize per column."""
    from dataclasses import replace

    from compressor.methods.gptq.solver import gptq_round
    from compressor.primitives.grids import dequantize_nf, nf_levels, quantize_nf

    def run(x: torch.Tensor) -> list[tuple[torch.Tensor, Any]]:
        m, n = x.shape
        per = max(1, _STACK_ELEMENTS // max(1, m * n))
        out: list[tuple[torch.Tensor, Any]] = []
        for i in range(0, len(cfgs), per):
            out += _round_stack(x, list(cfgs[i:i + per]))
        return out

    def _round_stack(x: torch.Tensor, chunk: list[NFConfig]) -> list[tuple[torch.Tensor, Any]]:
        m, n = x.shape
        qs = [quantize_nf(x, bits=c.bits, block_size=c.block_size, double_quant=c.double_quant)
              for c in chunk]
        scale = torch.cat([q.absmax.float().repeat_interleave(c.block_size)[:m * n].view(m, n)
                           for q, c in zip(qs, chunk)])                 # (k·m, n)
        # column-major tables: column j's scales are one contiguous row
        scale_t = scale.t().contiguous()
        safe_t = torch.where(scale_t != 0, scale_t, torch.ones_like(scale_t))
        spans = []                                  # (rows, mids, levels) per code width
        for bits in dict.fromkeys(c.bits for c in chunk):
            rows = [k for k, c in enumerate(chunk) if c.bits == bits]
            idx = torch.cat([torch.arange(k * m, (k + 1) * m, device=x.device) for k in rows])
            levels = nf_levels(bits, x.device)
            lo, hi = rows[0] * m, (rows[-1] + 1) * m
            contiguous = hi - lo == idx.numel()
            spans.append((slice(lo, hi) if contiguous else idx, (levels[1:] + levels[:-1]) / 2, levels))
        codes = torch.empty(len(chunk) * m, dtype=torch.uint8, device=x.device)
        vals = torch.empty(len(chunk) * m, dtype=torch.float32, device=x.device)

        def round_column(j: int, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            for rows, mids, levels in spans:
                c = torch.bucketize(v[rows] / safe_t[j, rows], mids)
                codes[rows] = c.to(torch.uint8)
                vals[rows] = levels[c] * scale_t[j, rows]
            return codes, vals       # consumed (copied) by obs_loop before the next column
        stacked = x.detach().float().repeat(len(chunk), 1)
        all_codes = gptq_round(stacked, hessian, round_column)
        res = []
        for k, q in enumerate(qs):
            q = replace(q, codes=all_codes[k * m:(k + 1) * m].contiguous())
            res.append((dequantize_nf(q), q))
        return res
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
