"""GPTQ's solver: column-by-column quantization with second-order error feedback (pure math)."""

from __future__ import annotations

import torch
from torch import Tensor

from compressor.primitives.grids import (
    UniformQ,
    check_bits,
    group_index,
    group_len,
    n_groups,
    quantize_rtn,
    round_codes,
    scale_zero,
)


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
    check_bits(bits)
    W = w.detach().float().clone()
    out_f, in_f = W.shape
    maxq = 2 ** bits - 1
    H = gram.detach().to(device=W.device, dtype=torch.float64).clone()
    if H.shape != (in_f, in_f) or not bool(torch.isfinite(H).all()):
        raise ValueError(f"GPTQ: gram must be a finite ({in_f}, {in_f}) matrix, got "
                        f"{tuple(H.shape)}; recollect calibration statistics.")
    diag = torch.diagonal(H)
    dead = diag == 0
    diag[dead] = 1.0                     # no coupling: Hinv row of a dead column is e_j
    excl = torch.zeros_like(W, dtype=torch.bool) if mask is None else mask.to(torch.bool).clone()
    gl = group_len(in_f, group_size)
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
            raise ValueError(f"GPTQ: Hessian not positive definite even with damping {float(damp):.3g}; "
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
                s, z = scale_zero(g, bits, sym, excl[:, col:gend])
                scale[:, col // gl], zero[:, col // gl] = s, z
            x, m, s, z = W1[:, i], excl[:, col], scale[:, cgroup[col]], zero[:, cgroup[col]]
            c = torch.where(m, z, round_codes(x, s, z, maxq))
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
