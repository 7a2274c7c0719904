"""GPTQ's solver: column-by-column quantization with second-order error feedback (pure math).

prepare_hessian damps and factors a Gram once (linears fed the same input share it);
obs_loop is the OBS update loop in lazy blocks, with the rounding injected: gptq_quantize runs
it with GPTQ's uniform group grids, gptq_round with any fixed grid (LQ-LoRA's NormalFloat).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from compressor.primitives.grids import (
    UniformQ,
    check_bits,
    group_grid,
    group_index,
    group_len,
    n_groups,
    scale_zero,
)
from compressor.primitives.linalg import lower_triangular_inverse

GPTQ_GRIDS = ("exact", "block-lazy")


@dataclass
class GPTQHessian:
    """What GPTQ needs from a Gram matrix, independent of the weight: the upper Cholesky
    factor of (H + damp·I)^-1 (float32, columns in processing order) and the act-order
    permutation. Linears fed the same input (q/k/v, gate/up) share one: ``prepare_hessian``
    once, ``gptq_quantize(..., hessian=h)`` for each."""

    hinv: Tensor              # (in, in) float32 upper triangular
    perm: Tensor | None       # act-order column order (None: natural order)
    dead: Tensor              # (in,) bool, zero diagonal in the Gram
    diag: Tensor              # (in,) float32 Gram diagonal, original column order
    damp: float
    percdamp: float
    retries: int


def prepare_hessian(gram: Tensor, percdamp: float = 0.01, act_order: bool = False,
                    max_retries: int = 4, device: torch.device | None = None) -> GPTQHessian:
    """Damp H = gram + damp·I (damp = percdamp · mean diag, ×10 per failed Cholesky, at most
    ``max_retries`` times), invert through Cholesky in float64, return the upper factor.

    Scaling ``gram`` by any c > 0 (per-token vs per-sequence normalization, the factor 2 of
    the squared loss) changes nothing downstream: damping is relative to the diagonal and
    GPTQ uses only ratios of Hinv entries.

    Memory: at most about 2.5 float64 in×in matrices at a time (the damped H is built
    already reversed and dropped once factored, rebuilt from ``gram`` only on a retry).
    """
    dev = device if device is not None else gram.device
    in_f = gram.shape[0]
    if gram.ndim != 2 or gram.shape[1] != in_f or not bool(torch.isfinite(gram).all()):
        raise ValueError(f"GPTQ: gram must be a finite square matrix, got {tuple(gram.shape)}; "
                        "recollect calibration statistics.")
    G = gram.detach().to(dev)
    undamped = torch.diagonal(G).to(torch.float64)
    dead = undamped == 0
    undamped[dead] = 1.0                 # no coupling: Hinv row of a dead column is e_j
    perm = None
    if act_order:
        perm = torch.argsort(undamped, descending=True, stable=True)
        undamped = undamped[perm]
    base = undamped.mean().clamp(min=1e-8)   # a gram's diagonal is >= 0
    damp, retries = percdamp * base, 0
    # reversed column order: with J the reversal, J H J = L Lᵀ gives H^-1 = (J L^-1 J)ᵀ
    # (J L^-1 J), and J L^-1 J is upper triangular: one Cholesky and one triangular inverse,
    # not Cholesky, inverse and a second Cholesky.
    rev = (perm if perm is not None else torch.arange(in_f, device=dev)).flip(0)
    while True:      # the upper Cholesky factor of H^-1, as in the paper
        Hf = G[rev][:, rev].to(torch.float64)     # J H J (permuted), gathered exactly
        torch.diagonal(Hf).copy_((undamped + damp).flip(0))
        L, err = torch.linalg.cholesky_ex(Hf)
        del Hf
        if int(err) == 0:
            inv = lower_triangular_inverse(L)
            del L
            if bool(torch.isfinite(inv).all()):
                hinv = inv.float().flip(0, 1)
                break
            del inv
        if retries >= max_retries:
            raise ValueError(f"GPTQ: Hessian not positive definite even with damping {float(damp):.3g}; "
                            "raise percdamp or use more calibration data.")
        damp, retries = damp * 10, retries + 1
    return GPTQHessian(hinv, perm, dead, gram.diagonal().detach().float().clone().to(dev),
                       float(damp), percdamp, retries)


def gptq_quantize(w: Tensor, gram: Tensor | None, bits: int, group_size: int = 128,
                  sym: bool = False, percdamp: float = 0.01, blocksize: int = 128,
                  act_order: bool = False, mask: Tensor | None = None, max_retries: int = 4,
                  static_groups: bool = False, grid: str = "exact", mse_grid: int = 0,
                  mse_maxshrink: float = 0.8, mse_norm: float = 2.4, mse_weighted: bool = False,
                  hessian: GPTQHessian | None = None) -> tuple[UniformQ, dict]:
    """GPTQ (Frantar et al. 2022): quantize columns one by one, pushing each column's error
    onto the not-yet-quantized columns through the inverse Hessian H = gram + damp·I.

    Where each group's grid (scale, zero) comes from:

    * ``static_groups``: once, from the original weights, before any update (llm-compressor's
      memoryless min-max observer; IST-DASLab/gptq ``--static-groups``);
    * otherwise when the group's first column is reached, from the updated weights: with
      ``grid="exact"`` the weights as they are at that moment (every earlier column's update
      applied, including the pending in-block ones); with ``grid="block-lazy"`` the
      lazily-updated W the reference implementation reads (updates of earlier *blocks* only:
      at a group boundary inside a block it does not see the in-block working copy).

    ``mse_grid`` > 0 searches each group's range (see ``scale_zero``) instead of plain
    min/max; ``mse_weighted`` weights each column's error there by the Gram diagonal (the
    column's input energy: the diagonal approximation of the output error). ``act_order`` (columns by descending diag(H)) implies static groups in the
    original column order, so every group stays a contiguous range. ``hessian`` (from
    ``prepare_hessian`` with the same percdamp / act_order) skips the factorization, for
    linears that share an input. Dead columns (zero diagonal) are quantized plainly and
    propagate nothing. ``mask`` entries are kept exactly (zero error, nothing propagated);
    see ``UniformQ.outliers``.
    """
    check_bits(bits)
    if grid not in GPTQ_GRIDS:
        raise ValueError(f"GPTQ grid={grid!r}: use one of {', '.join(GPTQ_GRIDS)}.")
    W = w.detach().float()          # read only: the loop updates its own transposed copy
    out_f, in_f = W.shape
    maxq = 2 ** bits - 1
    if hessian is None:
        if gram is None or tuple(gram.shape) != (in_f, in_f):
            raise ValueError(f"GPTQ: gram must be a finite ({in_f}, {in_f}) matrix, got "
                            f"{None if gram is None else tuple(gram.shape)}; recollect "
                            "calibration statistics.")
        hessian = prepare_hessian(gram, percdamp, act_order, max_retries, W.device)
    elif (hessian.perm is not None) != act_order or hessian.hinv.shape != (in_f, in_f) \
            or hessian.percdamp != percdamp:
        raise ValueError("gptq_quantize: the prepared hessian does not match this call "
                         "(act_order, percdamp or width)")
    Hinv = hessian.hinv.to(W.device)
    has_mask = mask is not None
    excl = mask.to(torch.bool).clone() if has_mask else None
    gl = group_len(in_f, group_size)
    gidx = group_index(in_f, group_size, W.device)
    mse = (mse_grid, mse_maxshrink, mse_norm)
    hdiag = hessian.diag.to(W.device) if mse_weighted and mse_grid > 0 else None
    static_groups = static_groups or act_order
    if static_groups:   # before any permutation or update
        scale, zero = group_grid(W, bits, group_size, sym, excl, *mse, hdiag)
    else:
        scale = W.new_ones(out_f, n_groups(in_f, group_size))
        zero = W.new_zeros(out_f, scale.shape[1])
    # The loop works on Wᵀ (in, out): a column of W is a contiguous row, and the rank-1 and
    # block updates touch contiguous memory.
    WT, perm = W.t().contiguous(), hessian.perm
    exclT = excl.t() if has_mask else None
    if perm is not None:
        perm = perm.to(W.device)
        WT, gidx = WT[perm], gidx[perm]
        if has_mask:
            exclT = exclT[perm]
    keptT = torch.zeros_like(WT) if has_mask else None
    lazy = grid == "block-lazy"
    col_scale, col_zero = {}, {}

    def group_start(i1: int, i2: int, i: int, W1: Tensor, Err1: Tensor) -> None:
        """A dynamic group starts at column i1 + i: its grid from the updated weights."""
        col = i1 + i
        gend = min(col + gl, in_f)
        if lazy:    # the reference reads W: earlier blocks' updates only
            g = WT[col:gend]
        else:       # exact: this block's pending updates applied, and past the block
            ahead = WT[i2:gend] - Hinv[i1:col, i2:gend].t() @ Err1[:i]
            g = torch.cat([W1[i:], ahead], 0)[:gend - col]
        s, z = scale_zero(g.t(), bits, sym, None if excl is None else excl[:, col:gend],
                          *mse, None if hdiag is None else hdiag[col:gend])
        scale[:, col // gl], zero[:, col // gl] = s, z
        col_scale["block"][i:min(gend, i2) - i1] = s
        col_zero["block"][i:min(gend, i2) - i1] = z

    def start_block(i1: int, i2: int) -> None:
        # per-column grid of this block; a dynamic group's entries are (re)written when the
        # group starts, those of a group that started in an earlier block are already set
        col_scale["block"], col_zero["block"] = scale.t()[gidx[i1:i2]], zero.t()[gidx[i1:i2]]

    def round_column(col: int, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        s, z = col_scale["block"][i], col_zero["block"][i]
        c = torch.round(x / s).add_(z).clamp_(0, maxq)
        if not has_mask:
            return c, (c - z).mul_(s)
        m = exclT[col]
        keptT[col] = torch.where(m, x, torch.zeros_like(x))
        return torch.where(m, z, c), torch.where(m, x, (c - z) * s)   # masked: kept exactly

    codesT = obs_loop(WT, Hinv, blocksize, round_column, start_block,
                      None if static_groups else (gl, group_start))
    if perm is not None:
        inv = torch.argsort(perm)
        codesT = codesT[inv]
        if keptT is not None:
            keptT = keptT[inv]
    codes = codesT.t().contiguous()
    kept = None if keptT is None else keptT.t().contiguous()
    info = {"damp": hessian.damp, "percdamp": percdamp, "retries": hessian.retries,
            "dead_columns": int(hessian.dead.sum())}
    q = UniformQ(codes, scale, zero, bits, group_size, sym, kept)
    return q, info


def gptq_round(w: Tensor, hessian: GPTQHessian,
               round_column: Callable[[int, Tensor], tuple[Tensor, Tensor]],
               blocksize: int = 128) -> Tensor:
    """GPTQ's error feedback around any fixed per-element grid: uint8 codes (out, in).

    ``round_column(j, x)`` rounds column j (original index) of the updated weights, x (out,),
    and returns (codes, their values). The columns are visited in ``hessian``'s order and
    each column's rounding error is pushed onto the columns not yet visited through the
    inverse Hessian, as in ``gptq_quantize``; the grid itself (e.g. NormalFloat levels times
    block scales fixed beforehand) is the caller's.
    """
    W = w.detach().float()
    out_f, in_f = W.shape
    Hinv = hessian.hinv.to(W.device)
    order = (torch.arange(in_f, device=W.device) if hessian.perm is None
             else hessian.perm.to(W.device))
    WT = W.t()[order].contiguous()
    cols = order.tolist()
    codesT = obs_loop(WT, Hinv, blocksize, lambda pos, i, x: round_column(cols[pos], x))
    return codesT[torch.argsort(order)].t().contiguous()


def obs_loop(WT: Tensor, Hinv: Tensor, blocksize: int,
             round_column: Callable[[int, int, Tensor], tuple[Tensor, Tensor]],
             start_block: Callable[[int, int], None] | None = None,
             groups: tuple[int, Callable[..., None]] | None = None) -> Tensor:
    """GPTQ's optimal-brain-surgeon loop, the one both quantizers run: columns of W (rows of
    ``WT``, (in, out), already in processing order, updated in place) are rounded one by one
    and each column's error is pushed onto the later ones through the upper Cholesky factor
    ``Hinv`` of the inverse Hessian, in lazy blocks of ``blocksize`` columns. Returns the uint8
    codes (in, out), in processing order.

    The rounding is injected: ``round_column(pos, i, x)`` rounds column ``pos`` (= block start
    + i) of the updated weights and returns (codes, their values); ``start_block(i1, i2)``
    runs before each block; ``groups`` = (group length, hook): the hook(i1, i2, i, W1, Err1)
    runs where a group starts, with the block's pending state (GPTQ's dynamic grids).
    """
    in_f = WT.shape[0]
    codesT = torch.empty(WT.shape, dtype=torch.uint8, device=WT.device)   # integral: exact
    gl, group_start = groups if groups is not None else (0, None)
    for i1 in range(0, in_f, blocksize):
        i2 = min(i1 + blocksize, in_f)
        W1, Hinv1 = WT[i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.empty_like(W1)
        C1 = torch.empty_like(W1)
        if start_block is not None:
            start_block(i1, i2)
        for i in range(i2 - i1):
            if group_start is not None and (i1 + i) % gl == 0:
                group_start(i1, i2, i, W1, Err1)
            x = W1[i]
            c, qx = round_column(i1 + i, i, x)
            C1[i] = c
            e = (x - qx).div_(Hinv1[i, i])
            Err1[i] = e
            W1[i:].addr_(Hinv1[i, i:], e, alpha=-1)
        codesT[i1:i2] = C1
        if i2 < in_f:
            WT[i2:].addmm_(Hinv[i1:i2, i2:].t(), Err1, alpha=-1)
    return codesT
