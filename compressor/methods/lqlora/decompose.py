"""LQ-LoRA's alternating decomposition (Guo et al. 2023): W ≈ Q + L, Q NormalFloat-quantized, L = BA of rank r.

L = best rank-r approximation of W − Q, then Q = quantize(W − L), repeated while the error
falls; the best (Q, L) pair seen is kept. With √Fisher row / column weights (r, c) the
error is ‖diag(r)(W − Q − L)diag(c)‖_F, whose rank-r minimizer is exact: SVD of
diag(r)(W − Q)diag(c), then divide the weights out. The quantizer itself stays unweighted
(NF is data-free), as in the paper.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

import compressor.primitives.linalg as linalg
from compressor.primitives.linalg import check_rank

Quantizer = Callable[[torch.Tensor], tuple[torch.Tensor, Any]]


def _weighted_sq(e: torch.Tensor, r: torch.Tensor | None, c: torch.Tensor | None) -> float:
    e = e.double()
    if r is not None:
        e = e * r[:, None]
    if c is not None:
        e = e * c[None, :]
    return float(e.pow(2).sum())


def lq_decompose(w: torch.Tensor, rank: int, quantizer: Quantizer, max_iters: int = 20,
                 row_weight: torch.Tensor | None = None,
                 col_weight: torch.Tensor | None = None,
                 generator: torch.Generator | None = None,
                 svd_method: linalg.SvdMethod = "full"
                 ) -> tuple[Any, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Best (q, A, B) found with W ≈ dequant(q) + B·A; A (rank, in), B (out, rank) float32.

    ``quantizer(x) -> (dequantized x, q object)``. ``row_weight`` (out,) / ``col_weight``
    (in,) are the √Fisher weights of the weighted variant (raised to a small positive floor
    so the weighting can be undone). As in the paper, the sequence starts from Q⁽⁰⁾ = 0
    (L = SVD_r(W) first, then Q = quantize(W − L)) and alternates; a step whose error rises
    ends the loop. Quantization alone (Q = quantize(W), L = 0) is kept as a candidate, so the
    result is never worse than it (and it is the whole answer at rank 0).
    info: iterations, errors (relative weighted squared error: quantization only, then after
    each full step), error (best, relative), abs_error (best, weighted squared), weight_floored.
    """
    m, n = w.shape
    check_rank(m, n, rank, "the LQ-LoRA matrix", zero_ok=True)
    if max_iters < 0:
        raise ValueError("max_iters must be >= 0")
    w = w.float()
    floored = 0
    r = c = None
    if row_weight is not None:
        r, k = linalg.positive_weights(row_weight.to(w.device))
        floored += k
    if col_weight is not None:
        c, k = linalg.positive_weights(col_weight.to(w.device))
        floored += k
    ref = _weighted_sq(w, r, c)
    ref = ref if ref > 0 else 1.0

    def lowrank(resid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if rank == 0:
            return w.new_zeros(0, n), w.new_zeros(m, 0)
        return linalg.weighted_truncation_rows_cols(
            resid, r, c, rank=rank, dtype=torch.float32, generator=generator,
            method=svd_method)

    deq, q = quantizer(w)
    a, b = w.new_zeros(rank, n), w.new_zeros(m, rank)
    best_err = _weighted_sq(w - deq, r, c)
    best = (q, a, b)
    errors = [best_err / ref]
    deq = torch.zeros_like(w)                         # the paper's start: Q(0) = 0
    prev = math.inf
    iters = 0
    for iters in range(1, (max_iters if rank > 0 else 0) + 1):
        a, b = lowrank(w - deq)
        low = b @ a
        if iters > 1:
            half = _weighted_sq(w - deq - low, r, c)  # (old Q, new L)
            if half < best_err:
                best_err, best = half, (q, a, b)
        deq, q = quantizer(w - low)
        err = _weighted_sq(w - deq - low, r, c)
        errors.append(err / ref)
        if err < best_err:
            best_err, best = err, (q, a, b)
        if err >= prev:                               # the paper's stop: the error rose
            break
        prev = err
    info = {"iterations": iters, "errors": [float(f"{e:.6g}") for e in errors],
            "error": best_err / ref, "abs_error": best_err, "weight_floored": floored}
    return best[0], best[1], best[2], info
