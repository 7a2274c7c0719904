"""Weight quantizers and pruning masks: pure tensor math, no modules, no I/O.

* Group-wise uniform quantization (round-to-nearest and GPTQ). Groups run along the input
  dimension of an (out, in) weight; the last group is ragged when ``in % group_size != 0``.
  Codes are integers in ``[0, 2**bits)``; a weight dequantizes to ``(code - zero) * scale``.
* NormalFloat (QLoRA's NF-k): levels at normal quantiles, blockwise absmax over the flattened
  weight, optional double quantization of the absmax constants.
* Bit packing of codes into a dense little-endian bitstream (any width 2..8).
* Pruning masks: per-row magnitude and N:M.

Scales are rounded to float16 *before* the codes are chosen, so the codes are optimal for
the scale that is actually stored and a stored part dequantizes exactly like ``dequantize``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import UserError

_FP16_MIN_SCALE = 2.0 ** -24   # smallest positive float16 (subnormal)
_FP16_MAX = 65504.0


# --------------------------------------------------------------------------------------
# uniform group-wise quantization
# --------------------------------------------------------------------------------------
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


def _check_bits(bits: int, low: int = 2, high: int = 8) -> None:
    if not isinstance(bits, int) or not low <= bits <= high:
        raise UserError(f"bits={bits!r} is not supported; use an integer from {low} to {high}.")


def _group_len(in_features: int, group_size: int) -> int:
    """Columns per group: the whole row when group_size <= 0 or larger than the row."""
    return in_features if group_size <= 0 or group_size >= in_features else group_size


def n_groups(in_features: int, group_size: int) -> int:
    """Number of groups per row (the last one may be shorter)."""
    return -(-in_features // _group_len(in_features, group_size))


def group_index(in_features: int, group_size: int, device: torch.device | None = None) -> Tensor:
    """(in,) long: the group each input column belongs to."""
    return torch.arange(in_features, device=device) // _group_len(in_features, group_size)


def _scale_zero(w: Tensor, bits: int, sym: bool, mask: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
    """Min/max quantization grid over the last dim of ``w``, ignoring ``mask`` entries.

    The range always contains 0 so the zero point is a valid code (an all-masked or
    all-zero group gets scale 1, which dequantizes its zero codes to exactly 0).
    """
    maxq = 2 ** bits - 1
    if mask is None:
        lo, hi = w.amin(-1), w.amax(-1)
    else:
        lo = w.masked_fill(mask, math.inf).amin(-1)
        hi = w.masked_fill(mask, -math.inf).amax(-1)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
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


def _round(w: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> Tensor:
    """Nearest code (float) for ``w`` on the grid (broadcasting scale/zero)."""
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


def quantize_rtn(w: Tensor, bits: int, group_size: int = 128, sym: bool = False,
                 mask: Tensor | None = None) -> UniformQ:
    """Round-to-nearest group-wise quantization; ``mask`` (True) entries are kept aside."""
    _check_bits(bits)
    w = w.detach().float()
    out_f, in_f = w.shape
    gl = _group_len(in_f, group_size)
    ng = n_groups(in_f, group_size)
    pad = ng * gl - in_f
    excl = torch.zeros_like(w, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    wp = torch.cat([w, w.new_zeros(out_f, pad)], 1).view(out_f, ng, gl)
    mp = torch.cat([excl, excl.new_ones(out_f, pad)], 1).view(out_f, ng, gl)
    scale, zero = _scale_zero(wp, bits, sym, mp)
    gidx = group_index(in_f, group_size, w.device)
    codes = _round(w, scale[:, gidx], zero[:, gidx], 2 ** bits - 1)
    outliers = None
    if mask is not None:
        codes = torch.where(excl, zero[:, gidx], codes)
        outliers = torch.where(excl, w, torch.zeros_like(w))
    return UniformQ(codes.to(torch.uint8), scale, zero, bits, group_size, sym, outliers)


def dequantize(q: UniformQ) -> Tensor:
    """float32 (out, in) weight from codes, scales and zeros (outliers not included)."""
    out_f, in_f = q.codes.shape
    gl = _group_len(in_f, q.group_size)
    full = in_f // gl                     # whole groups; a shorter last one is done apart
    out = q.codes.float()                 # decoded in place, a group at a time by broadcast
    zero, scale = q.zero.float(), q.scale.float()
    head = out[:, :full * gl].view(out_f, full, gl)
    head.sub_(zero[:, :full, None]).mul_(scale[:, :full, None])
    if full * gl < in_f:
        out[:, full * gl:].sub_(zero[:, full:]).mul_(scale[:, full:])
    return out


def gptq_quantize(w: Tensor, gram: Tensor, bits: int, group_size: int = 128, sym: bool = False,
                  percdamp: float = 0.01, blocksize: int = 128, act_order: bool = False,
                  mask: Tensor | None = None, max_retries: int = 4,
                  static_groups: bool = False) -> tuple[UniformQ, dict]:
    """GPTQ (Frantar et al. 2022): quantize columns one by one, pushing each column's error
    onto the not-yet-quantized columns through the inverse Hessian H = gram + damp·I.

    Groups are computed on the current (updated) weights when a group starts (the paper);
    with ``static_groups`` they are computed once from the original weights (what
    llm-compressor does); ``act_order`` (columns by descending diag(H)) implies static
    groups, in the original column order, so every group stays a contiguous range.
    Dead columns (zero diagonal) are quantized plainly and propagate nothing. ``mask``
    entries are kept exactly (zero error, nothing propagated); see ``UniformQ.outliers``.
    """
    _check_bits(bits)
    W = w.detach().float().clone()
    out_f, in_f = W.shape
    maxq = 2 ** bits - 1
    H = gram.detach().to(device=W.device, dtype=torch.float64).clone()
    if H.shape != (in_f, in_f) or not bool(torch.isfinite(H).all()):
        raise UserError(f"GPTQ: gram must be a finite ({in_f}, {in_f}) matrix, got "
                        f"{tuple(H.shape)}; recollect calibration statistics.")
    diag = torch.diagonal(H)
    dead = diag == 0
    diag[dead] = 1.0                     # no coupling: Hinv row of a dead column is e_j
    excl = torch.zeros_like(W, dtype=torch.bool) if mask is None else mask.to(torch.bool).clone()
    gl = _group_len(in_f, group_size)
    gidx = group_index(in_f, group_size, W.device)
    scale = W.new_ones(out_f, n_groups(in_f, group_size))
    zero = W.new_zeros(out_f, scale.shape[1])
    static_groups = static_groups or act_order
    if static_groups:   # before any permutation or update
        static = quantize_rtn(W, bits, group_size, sym, excl)
        scale, zero = static.scale, static.zero
    if act_order:
        perm = torch.argsort(torch.diagonal(H), descending=True)
        W, H, excl, gidx = W[:, perm], H[perm][:, perm], excl[:, perm], gidx[perm]
    cgroup = gidx.tolist()              # group of each (processed) column, host-side
    base = torch.diagonal(H).mean().clamp(min=1e-8)   # a gram's diagonal is >= 0
    damp, retries = percdamp * base, 0
    while True:      # H^-1 through Cholesky, upper factor as in the paper
        L, err = torch.linalg.cholesky_ex(H + damp * torch.eye(in_f, dtype=H.dtype, device=H.device))
        if int(err) == 0:
            Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
            if bool(torch.isfinite(Hinv).all()):
                break
        if retries >= max_retries:
            raise UserError(f"GPTQ: Hessian not positive definite even with damping {float(damp):.3g}; "
                            "raise percdamp or use more calibration data.")
        damp, retries = damp * 10, retries + 1
    Hinv = Hinv.float()
    codes = torch.zeros_like(W)
    kept = torch.zeros_like(W)
    for i1 in range(0, in_f, blocksize):
        i2 = min(i1 + blocksize, in_f)
        W1, Err1, Hinv1 = W[:, i1:i2].clone(), torch.zeros_like(W[:, i1:i2]), Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if not static_groups and col % gl == 0:   # a group starts: grid from current weights
                gend = min(col + gl, in_f)
                ahead = W[:, i2:gend] - Err1[:, :i] @ Hinv[i1:col, i2:gend]   # pending lazy update
                g = torch.cat([W1[:, i:], ahead], 1)[:, :gend - col]
                s, z = _scale_zero(g, bits, sym, excl[:, col:gend])
                scale[:, col // gl], zero[:, col // gl] = s, z
            x, m, s, z = W1[:, i], excl[:, col], scale[:, cgroup[col]], zero[:, cgroup[col]]
            c = torch.where(m, z, _round(x, s, z, maxq))
            qx = torch.where(m, x, (c - z) * s)                 # masked: kept exactly
            codes[:, col], kept[:, col] = c, torch.where(m, x, torch.zeros_like(x))
            e = (x - qx) / Hinv1[i, i]
            W1[:, i:] -= e[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = e
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if act_order:
        inv = torch.argsort(perm)
        codes, kept = codes[:, inv], kept[:, inv]
    info = {"damp": float(damp), "percdamp": percdamp, "retries": retries,
            "dead_columns": int(dead.sum())}
    q = UniformQ(codes.to(torch.uint8), scale, zero, bits, group_size, sym,
                 kept if mask is not None else None)
    return q, info


# --------------------------------------------------------------------------------------
# bit packing
# --------------------------------------------------------------------------------------
def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Little-endian bitstream: code k occupies bits [k·bits, (k+1)·bits); ceil(n·bits/8) bytes.

    Eight codes fill exactly ``bits`` bytes, so codes are packed eight at a time in int64.
    """
    _check_bits(bits, 1, 8)
    flat = codes.reshape(-1).to(torch.uint8)
    n = flat.numel()
    if bits == 8:
        return flat.clone()
    pad = (-n) % 8
    c = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 8).to(torch.int64)
    shifts = torch.arange(8, device=c.device, dtype=torch.int64) * bits
    word = (c << shifts).sum(1, keepdim=True)          # disjoint bit ranges: sum == or
    byte_shifts = torch.arange(bits, device=c.device, dtype=torch.int64) * 8
    out = ((word >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)
    return out[: -(-n * bits // 8)].clone()


def unpack_bits(packed: Tensor, bits: int, numel: int) -> Tensor:
    """Inverse of ``pack_bits``: 1-D uint8 codes of length ``numel``."""
    _check_bits(bits, 1, 8)
    flat = packed.reshape(-1).to(torch.uint8)
    if bits == 8:
        return flat[:numel].clone()
    if 8 % bits == 0:        # 1, 2, 4 bits: whole codes per byte, all in uint8
        shifts = torch.arange(0, 8, bits, device=flat.device, dtype=torch.uint8)
        return ((flat[:, None] >> shifts) & (2 ** bits - 1)).reshape(-1)[:numel]
    nwords = -(-numel // 8)
    need = nwords * bits
    # eight codes are `bits` bytes: one integer word each (int32 holds 3 bytes), built byte
    # by byte (no (n, bits) wide temporary), split with one broadcast shift
    wide = torch.int32 if bits <= 3 else torch.int64
    b = torch.cat([flat, flat.new_zeros(need - flat.numel())]).view(nwords, bits)
    word = b[:, 0].to(wide)
    for j in range(1, bits):
        word |= b[:, j].to(wide) << (8 * j)
    shifts = torch.arange(8, device=b.device, dtype=wide) * bits
    out = ((word[:, None] >> shifts) & (2 ** bits - 1)).to(torch.uint8).reshape(-1)
    return out[:numel]


# --------------------------------------------------------------------------------------
# NormalFloat
# --------------------------------------------------------------------------------------
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
    _check_bits(bits, 1, 8)
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
    _check_bits(bits)
    if block_size < 1:
        raise UserError(f"NF block_size={block_size} must be a positive integer (e.g. 64).")
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


# --------------------------------------------------------------------------------------
# pruning masks
# --------------------------------------------------------------------------------------
def magnitude_mask(w: Tensor, sparsity: float) -> Tensor:
    """Keep the largest |w| in each row (per-row, as Wanda compares within an output row).

    Per-row keeps every output channel alive and makes the achieved sparsity exact and
    uniform: round(sparsity · in) entries are removed from every row. ``w`` may be any
    score tensor (e.g. Wanda's |W|·‖x‖). Returns bool (out, in), True = kept.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise UserError(f"sparsity={sparsity} must be between 0 and 1 (fraction removed).")
    out_f, in_f = w.shape
    keep = in_f - int(round(sparsity * in_f))
    mask = torch.zeros(out_f, in_f, dtype=torch.bool, device=w.device)
    if keep > 0:
        idx = w.detach().abs().topk(keep, dim=1).indices
        mask.scatter_(1, idx, True)
    return mask


def n_m_mask(w: Tensor, n: int = 2, m: int = 4, score: Tensor | None = None) -> Tensor:
    """N:M mask: in every run of m consecutive inputs of a row keep the n best by ``score``
    (default |w|). Returns bool (out, in), True = kept."""
    out_f, in_f = w.shape
    if not 0 < n <= m:
        raise UserError(f"N:M pattern {n}:{m} is invalid; need 0 < N <= M (e.g. 2:4).")
    if in_f % m:
        raise UserError(f"N:M pruning needs in_features divisible by M; {in_f} % {m} != 0. "
                        "Use unstructured pruning for this layer.")
    s = (w.detach().abs() if score is None else score.detach()).reshape(out_f, in_f // m, m)
    idx = s.topk(n, dim=2).indices
    mask = torch.zeros(s.shape, dtype=torch.bool, device=w.device)
    mask.scatter_(2, idx, True)
    return mask.view(out_f, in_f)
