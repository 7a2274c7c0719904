"""Quantization grids: group-wise uniform (RTN) and NormalFloat, pure tensor math.

* Group-wise uniform: groups run along the input dimension of an (out, in) weight; the last
  group is ragged when in % group_size != 0. Codes are integers in [0, 2**bits); a weight
  dequantizes to (code - zero) * scale. Scales are rounded to float16 *before* the codes are
  chosen, so the codes are optimal for the scale actually stored and a stored part
  dequantizes exactly like dequantize().
* NormalFloat (QLoRA's NF-k): levels at normal quantiles, blockwise absmax over the
  flattened weight, optional double quantization of the absmax constants.
* MSE grid search (optional): shrink each group's min/max range over a grid of factors and
  keep the grid with the lowest (optionally Hessian-diagonal-weighted) error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

_FP16_MIN_SCALE = 2.0 ** -24   # smallest positive float16 (subnormal)


_FP16_MAX = 65504.0


@dataclass
class UniformQ:
    """Group-wise uniform quantization of an (out, in) weight.

    ``outliers`` is set when a ``mask`` was given: (out, in) float32 holding, at masked
    entries, the value the caller must keep exactly (e.g. in a sparse 16-bit part), zero
    elsewhere. Masked entries get the zero-point code, so ``dequantize`` gives exactly 0
    there and ``dequantize(q) + q.outliers`` is the intended weight.
    """

    codes: Tensor   # (out, in) uint8, values in [0, 2**bits)
    scale: Tensor   # (out, ngroups) float32 (float16-representable)
    zero: Tensor    # (out, ngroups) float32, integer-valued (sym: 2**(bits-1))
    bits: int
    group_size: int  # <= 0: one group per row
    sym: bool
    outliers: Tensor | None = None


def check_bits(bits: int, low: int = 2, high: int = 8) -> None:
    if not isinstance(bits, int) or not low <= bits <= high:
        raise ValueError(f"bits={bits!r} is not supported; use an integer from {low} to {high}.")


def group_len(in_features: int, group_size: int) -> int:
    """Columns per group: the whole row when group_size <= 0 or larger than the row."""
    return in_features if group_size <= 0 or group_size >= in_features else group_size


def n_groups(in_features: int, group_size: int) -> int:
    """Number of groups per row (the last one may be shorter)."""
    return -(-in_features // group_len(in_features, group_size))


def group_index(in_features: int, group_size: int, device: torch.device | None = None) -> Tensor:
    """(in,) long: the group each input column belongs to."""
    return torch.arange(in_features, device=device) // group_len(in_features, group_size)


def _min_max(w: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Row minimum and maximum over the last dim, ignoring ``mask`` entries; the range
    always contains 0 so the zero point is a valid code."""
    if mask is None:
        lo, hi = w.amin(-1), w.amax(-1)
    else:
        lo = w.masked_fill(mask, math.inf).amin(-1)
        hi = w.masked_fill(mask, -math.inf).amax(-1)
    return lo.clamp(max=0), hi.clamp(min=0)


def _grid_from_range(lo: Tensor, hi: Tensor, bits: int, sym: bool) -> tuple[Tensor, Tensor]:
    """Scale (float16-representable) and integer zero point of the grid spanning [lo, hi].

    An empty range (all-masked or all-zero group) gets scale 1, which dequantizes its zero
    codes to exactly 0.
    """
    maxq = 2 ** bits - 1
    if sym:
        scale = 2 * torch.maximum(-lo, hi) / maxq
    else:
        scale = (hi - lo) / maxq
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scale = scale.clamp(_FP16_MIN_SCALE, _FP16_MAX).half().float()
    if sym:
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def scale_zero(w: Tensor, bits: int, sym: bool, mask: Tensor | None = None,
                mse_grid: int = 0, mse_maxshrink: float = 0.8, mse_norm: float = 2.4,
                mse_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Quantization grid over the last dim of ``w``, ignoring ``mask`` entries.

    ``mse_grid`` <= 0: the min/max grid. ``mse_grid`` = n > 0: the min/max range shrunk by
    the factors p = 1 - k/n, k = 0 .. ceil(mse_maxshrink·n) - 1 (both ends by the same p),
    keeping, per row, the grid whose reconstruction error sum |q(w) - w|^mse_norm is lowest
    (p = 1, plain min/max, is always a candidate, so the error never exceeds min/max's).
    ``mse_weight`` (broadcastable to ``w``, e.g. the Hessian diagonal of each column) weights
    each entry's error. The error is measured with the stored (float16) scale.
    """
    lo, hi = _min_max(w, mask)
    scale, zero = _grid_from_range(lo, hi, bits, sym)
    if mse_grid <= 0:
        return scale, zero
    maxq = 2 ** bits - 1
    keep = None if mask is None else (~mask).to(w.dtype)
    if mse_weight is not None:
        keep = mse_weight.to(w.dtype) if keep is None else keep * mse_weight.to(w.dtype)

    def err(s: Tensor, z: Tensor) -> Tensor:
        s, z = s.unsqueeze(-1), z.unsqueeze(-1)
        # clamp(round(w/s) + z, 0, maxq) - z, with z integer-valued: one pass fewer
        d = torch.round(w / s).clamp_(-z, maxq - z).mul_(s).sub_(w)
        d = d.square_() if mse_norm == 2 else d.abs_().pow_(mse_norm)
        if keep is not None:
            d.mul_(keep)
        return d.sum(-1)

    best = err(scale, zero)
    for k in range(1, math.ceil(mse_maxshrink * mse_grid)):
        p = 1.0 - k / mse_grid
        s, z = _grid_from_range(lo * p, hi * p, bits, sym)
        e = err(s, z)
        better = e < best
        best = torch.where(better, e, best)
        scale = torch.where(better, s, scale)
        zero = torch.where(better, z, zero)
    return scale, zero


def round_codes(w: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> Tensor:
    """Nearest code (float) for ``w`` on the grid (broadcasting scale/zero); one temporary
    of ``w``'s size, the rest in place."""
    return torch.div(w, scale).round_().add_(zero).clamp_(0, maxq)


def _group_codes(w: Tensor, scale: Tensor, zero: Tensor, group_size: int, maxq: int) -> Tensor:
    """uint8 codes of an (out, in) weight, each group's scale and zero broadcast over its
    columns (no (out, in) copy of them); the ragged last group apart."""
    out_f, in_f = w.shape
    gl = group_len(in_f, group_size)
    full = in_f // gl
    codes = torch.empty(out_f, in_f, dtype=torch.uint8, device=w.device)
    head = w[:, :full * gl].reshape(out_f, full, gl)
    codes[:, :full * gl] = round_codes(head, scale[:, :full, None], zero[:, :full, None],
                                       maxq).view(out_f, full * gl)
    if full * gl < in_f:
        codes[:, full * gl:] = round_codes(w[:, full * gl:], scale[:, full:], zero[:, full:], maxq)
    return codes


def group_grid(w: Tensor, bits: int, group_size: int, sym: bool, mask: Tensor | None = None,
               mse_grid: int = 0, mse_maxshrink: float = 0.8, mse_norm: float = 2.4,
               mse_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(out, ngroups) scale and zero of every group of ``w`` (ragged last group padded and
    masked out); ``mse_*`` as in ``scale_zero``, ``mse_weight`` one weight per column."""
    out_f, in_f = w.shape
    gl = group_len(in_f, group_size)
    ng = n_groups(in_f, group_size)
    pad = ng * gl - in_f
    wp = (torch.cat([w, w.new_zeros(out_f, pad)], 1) if pad else w).reshape(out_f, ng, gl)
    mp = None                                   # no copies when nothing is masked or padded
    if mask is not None or pad:
        excl = torch.zeros_like(w, dtype=torch.bool) if mask is None else mask.to(torch.bool)
        mp = torch.cat([excl, excl.new_ones(out_f, pad)], 1).view(out_f, ng, gl)
    cw = None
    if mse_weight is not None:
        cw = torch.cat([mse_weight.to(w.dtype), w.new_zeros(pad)]).view(ng, gl)
    return scale_zero(wp, bits, sym, mp, mse_grid, mse_maxshrink, mse_norm, cw)


def quantize_rtn(w: Tensor, bits: int, group_size: int = 128, sym: bool = False,
                 mask: Tensor | None = None, mse_grid: int = 0, mse_maxshrink: float = 0.8,
                 mse_norm: float = 2.4) -> UniformQ:
    """Round-to-nearest group-wise quantization; ``mask`` (True) entries are kept aside.
    ``mse_grid`` > 0 searches each group's range (see ``scale_zero``)."""
    check_bits(bits)
    w = w.detach().float()
    in_f = w.shape[1]
    excl = None if mask is None else mask.to(torch.bool)
    scale, zero = group_grid(w, bits, group_size, sym, excl, mse_grid, mse_maxshrink, mse_norm)
    codes = _group_codes(w, scale, zero, group_size, 2 ** bits - 1)
    outliers = None
    if excl is not None:
        gidx = group_index(in_f, group_size, w.device)
        codes = torch.where(excl, zero[:, gidx].to(torch.uint8), codes)
        outliers = torch.where(excl, w, torch.zeros_like(w))
    return UniformQ(codes, scale, zero, bits, group_size, sym, outliers)


def dequantize(q: UniformQ) -> Tensor:
    """float32 (out, in) weight from codes, scales and zeros (outliers not included)."""
    out_f, in_f = q.codes.shape
    gl = group_len(in_f, q.group_size)
    full = in_f // gl                     # whole groups; a shorter last one is done apart
    out = q.codes.float()                 # decoded in place, a group at a time by broadcast
    zero, scale = q.zero.float(), q.scale.float()
    head = out[:, :full * gl].view(out_f, full, gl)
    head.sub_(zero[:, :full, None]).mul_(scale[:, :full, None])
    if full * gl < in_f:
        out[:, full * gl:].sub_(zero[:, full:]).mul_(scale[:, full:])
    return out


@dataclass
class NFQ:
    """Blockwise NormalFloat quantization of a weight (blocks over the row-major flattening).

    ``absmax`` is always the effective per-block scale used for the codes (after double
    quantization when that is on); the ``absmax_*`` fields are what double quantization
    stores instead: int8 codes, one fp32 scale per 256 blocks and one fp32 offset (mean).
    """

    codes: Tensor                    # (out, in) uint8 level indices in [0, 2**bits)
    absmax: Tensor                   # (nblocks,) float32
    bits: int
    block_size: int
    double_quant: bool = False
    absmax_codes: Tensor | None = None   # (nblocks,) int8
    absmax_scale: Tensor | None = None   # (ceil(nblocks/256),) float32
    absmax_offset: Tensor | None = None  # (1,) float32
    dq_block_size: int = 256


def nf_levels(bits: int, device: torch.device | None = None) -> Tensor:
    """The 2**bits NormalFloat levels in [-1, 1], sorted (QLoRA's construction).

    2**(bits-1) positive and 2**(bits-1)-1 negative normal quantiles plus an exact zero;
    the outermost quantile is the midpoint of the two tail probabilities 1/(2·(2^k-1)) and
    1/(2·2^k), as in QLoRA's NF4 table.
    """
    check_bits(bits, 1, 8)
    half = 2 ** (bits - 1)
    offset = 1 - 0.5 * (1 / (2 * (2 ** bits - 1)) + 1 / (2 * 2 ** bits))
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, half + 1, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, half, dtype=torch.float64)[:-1])
    v = torch.cat([pos, neg, torch.zeros(1, dtype=torch.float64)]).sort().values
    return (v / v.max()).float().to(device)


def _double_quant(absmax: Tensor, dq_block: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """absmax - mean, symmetric int8 per ``dq_block`` blocks; returns codes, scale, offset, deq."""
    nb = absmax.numel()
    offset = absmax.mean().reshape(1)
    c = absmax - offset
    n2 = -(-nb // dq_block)
    cp = torch.cat([c, c.new_zeros(n2 * dq_block - nb)]).view(n2, dq_block)
    s2 = cp.abs().amax(1) / 127
    s2 = torch.where(s2 > 0, s2, torch.ones_like(s2))
    q = torch.round(cp / s2[:, None]).clamp(-127, 127)
    codes = q.reshape(-1)[:nb].to(torch.int8)
    return codes, s2, offset, nf_absmax_from_double_quant(codes, s2, offset, dq_block)


def quantize_nf(w: Tensor, bits: int = 4, block_size: int = 64, double_quant: bool = False
                ) -> NFQ:
    """NF-k quantization: per block, x / absmax is rounded to the nearest NF level."""
    check_bits(bits)
    if block_size < 1:
        raise ValueError(f"NF block_size={block_size} must be a positive integer (e.g. 64).")
    w = w.detach().float()
    flat = w.reshape(-1)
    n = flat.numel()
    nb = -(-n // block_size)
    blocks = torch.cat([flat, flat.new_zeros(nb * block_size - n)]).view(nb, block_size)
    absmax = blocks.abs().amax(1)
    fields: dict = {}
    if double_quant:
        codes2, s2, off, absmax = _double_quant(absmax, 256)
        fields = {"absmax_codes": codes2, "absmax_scale": s2, "absmax_offset": off}
    safe = torch.where(absmax != 0, absmax, torch.ones_like(absmax))
    levels = nf_levels(bits, w.device)
    mids = (levels[1:] + levels[:-1]) / 2
    codes = torch.bucketize(blocks / safe[:, None], mids).reshape(-1)[:n]
    return NFQ(codes.to(torch.uint8).view(w.shape), absmax, bits, block_size,
               double_quant, **fields)


def dequantize_nf(q: NFQ) -> Tensor:
    """float32 weight (shape of ``q.codes``) from NF codes and the effective block absmax."""
    n = q.codes.numel()
    levels = nf_levels(q.bits, q.codes.device)
    w = levels[q.codes.reshape(-1).long()]
    full = n // q.block_size              # whole blocks by broadcast; a shorter last one apart
    absmax = q.absmax.float()
    w[:full * q.block_size].view(full, q.block_size).mul_(absmax[:full, None])
    if full * q.block_size < n:
        w[full * q.block_size:].mul_(absmax[full])
    return w.view(q.codes.shape)


def nf_absmax_from_double_quant(codes: Tensor, scale: Tensor, offset: Tensor,
                                dq_block: int = 256) -> Tensor:
    """Effective absmax from double-quantized fields (what a stored part recomputes)."""
    nb = codes.numel()
    return codes.float() * scale.float().repeat_interleave(dq_block)[:nb] + offset.float()
