"""LQ-LoRA's alternating decomposition (Guo et al. 2023): W ≈ Q + L, Q NormalFloat-quantized, L = BA of rank r.

L = best rank-r approximation of W − Q, then Q = quantize(W − L), repeated while the error
falls; the best (Q, L) pair seen is kept. The error is measured in an objective space
P(X), linear in X, and the rank-r step is exact there:

* unweighted: P(X) = X, the paper's data-free ‖W − Q − L‖_F;
* Fisher-weighted (the paper's data-aware variant): P(X) = diag(r)·X·diag(c) with √Fisher row /
  column weights; SVD of diag(r)(W − Q)diag(c), then divide the weights out;
* output error on the calibration inputs: P(X) = X·L with XᵀX = L Lᵀ (the layer's Gram), so
  ‖P(W − Q − BA)‖² = tr(ΔW G ΔWᵀ); the rank step is SVD-LLM's whitened truncation of W − Q
  (undone with a triangular solve);
* Fisher-weighted output error: P(X) = diag(r)·X·L with r² the output channels' Fisher
  (summed squared loss gradients), ‖P(ΔW)‖² = tr(D_F ΔW G ΔWᵀ), the first-order estimate of
  the loss increase (comparable across layers, unlike the plain output error).

The quantizer itself stays unweighted (NF is data-free), as in the paper.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

import compressor.primitives.linalg as linalg
from compressor.primitives.linalg import check_rank

Quantizer = Callable[[torch.Tensor], tuple[torch.Tensor, Any]]


class _Objective:
    """P(X) and the exact rank-r minimizer of ‖P(R − BA)‖ for one of the three weightings."""

    def __init__(self, m: int, n: int, row: torch.Tensor | None, col: torch.Tensor | None,
                 whiten: torch.Tensor | None):
        self.r, self.c, self.L = row, col, whiten
        self._L32: torch.Tensor | None = None

    def apply(self, x: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """P(x) in float64 (``dtype`` float32: the product computed in float32, returned in
        float64)."""
        x = x.to(dtype)
        if self.r is not None:
            x = x * self.r[:, None].to(dtype)
        if self.c is not None:
            x = x * self.c[None, :].to(dtype)
        if self.L is not None:
            x = x @ (self.L if dtype == torch.float64 else self.L32)
        return x.to(torch.float64)

    @property
    def L32(self) -> torch.Tensor:
        if self._L32 is None:
            self._L32 = self.L.float()
        return self._L32

    def lowrank(self, px: torch.Tensor, rank: int, generator, method
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A, B, P(BA)) for the best rank-``rank`` BA given P(R) = ``px``, float64."""
        u, s, vh = linalg._svd64(px, rank, generator, method)
        p_low = (u * s) @ vh
        rt = s.sqrt()
        B, A = u * rt, rt[:, None] * vh
        if self.L is not None:
            A = torch.linalg.solve_triangular(self.L, A, upper=False, left=False)
        if self.r is not None:
            B = B / self.r[:, None]
        if self.c is not None:
            A = A / self.c[None, :]
        return A, B, p_low


def lq_decompose(w: torch.Tensor, rank: int, quantizer: Quantizer, max_iters: int = 20,
                 row_weight: torch.Tensor | None = None,
                 col_weight: torch.Tensor | None = None,
                 generator: torch.Generator | None = None,
                 svd_method: linalg.SvdMethod = "full",
                 whiten: torch.Tensor | None = None,
                 ) -> tuple[Any, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Best (q, A, B) found with W ≈ dequant(q) + B·A; A (rank, in), B (out, rank) float32.

    ``quantizer(x) -> (dequantized x, q object)``. ``row_weight`` (out,) / ``col_weight``
    (in,) are the √Fisher weights of the weighted variant (raised to a small positive floor
    so the weighting can be undone); ``whiten`` is a lower-triangular L with L Lᵀ = the
    (damped) calibration Gram, for the output-error variant, optionally with row weights
    (the Fisher-weighted output error; column weights and whitening both weight the input
    side, so not together).
    As in the paper, the sequence starts from Q⁽⁰⁾ = 0 (L = SVD_r(W) first, then
    Q = quantize(W − L)) and alternates; a step whose error rises ends the loop.
    Quantization first (Q = quantize(W), then L = the best rank-r fit of W − Q) is kept as
    a candidate too, so the result is never worse than quantization alone (the whole answer
    at rank 0). info: iterations, errors (relative squared error in the objective space:
    the quantization-first candidate, then after each full step), error (best, relative),
    abs_error (best, squared: tr(ΔW G ΔWᵀ) for the output error), weight_floored.
    """
    m, n = w.shape
    check_rank(m, n, rank, "the LQ-LoRA matrix", zero_ok=True)
    if max_iters < 0:
        raise ValueError("max_iters must be >= 0")
    if whiten is not None and col_weight is not None:
        raise ValueError("give either Fisher column weights or a whitening factor, not both")
    w = w.float()
    floored = 0
    r = c = L = None
    if row_weight is not None:
        r, k = linalg.positive_weights(row_weight.to(w.device))
        floored += k
    if col_weight is not None:
        c, k = linalg.positive_weights(col_weight.to(w.device))
        floored += k
    if whiten is not None:
        if whiten.shape != (n, n):
            raise ValueError(f"whitening factor has shape {tuple(whiten.shape)}, expected ({n}, {n})")
        L = whiten.to(device=w.device, dtype=torch.float64)
    obj = _Objective(m, n, r, c, L)
    pw = obj.apply(w)
    ref = float(pw.pow(2).sum())
    ref = ref if ref > 0 else 1.0

    def sq(x: torch.Tensor) -> float:
        return float(x.pow(2).sum())

    def lowrank(p_resid: torch.Tensor):
        if rank == 0:
            return (w.new_zeros(rank, n, dtype=torch.float64),
                    w.new_zeros(m, rank, dtype=torch.float64), torch.zeros_like(p_resid))
        return obj.lowrank(p_resid, rank, generator, svd_method)

    # Candidate 0: quantization first, then the best rank-r fit of what it left.
    deq, q = quantizer(w)
    p_res = pw - obj.apply(deq)
    a, b, p_low = lowrank(p_res)
    best_err = sq(p_res - p_low)
    best = (q, a, b)
    errors = [best_err / ref]
    # The paper's sequence: Q(0) = 0.
    p_q = torch.zeros_like(pw)
    prev = math.inf
    iters = 0
    for iters in range(1, (max_iters if rank > 0 else 0) + 1):
        p_res = pw - p_q
        a, b, p_low = lowrank(p_res)
        if iters > 1:
            half = sq(p_res - p_low)                  # (old Q, new L)
            if half < best_err:
                best_err, best = half, (q, a, b)
        deq, q = quantizer(w - (b @ a).float())
        p_q = obj.apply(deq)
        err = sq(pw - p_q - p_low)
        errors.append(err / ref)
        if err < best_err:
            best_err, best = err, (q, a, b)
        if err >= prev:                               # the paper's stop: the error rose
            break
        prev = err
    q, a, b = best
    a, b = linalg.balance_factors(a, b)
    info = {"iterations": iters, "errors": [float(f"{e:.6g}") for e in errors],
            "error": best_err / ref, "abs_error": best_err, "weight_floored": floored}
    return q, a.float(), b.float(), info


QuantizeAll = Callable[[torch.Tensor], list[tuple[torch.Tensor, Any]]]


def each(quantizers: list[Quantizer]) -> QuantizeAll:
    """``lq_plan_errors``' argument from separate quantizers (one call each)."""
    return lambda x: [qz(x) for qz in quantizers]


def lq_plan_errors(w: torch.Tensor, rank: int, quantize_all: QuantizeAll,
                   row_weight: torch.Tensor | None = None,
                   col_weight: torch.Tensor | None = None,
                   whiten: torch.Tensor | None = None,
                   generator: torch.Generator | None = None,
                   svd_method: linalg.SvdMethod = "randomized") -> list[float]:
    """The planning estimate of lq_decompose's squared error for each configuration
    ``quantize_all(x)`` rounds x to (a list of (dequantized, codes)), cheaply.

    One step of the paper's sequence, sharing what does not depend on the quantizer:
    L⁽¹⁾ = best rank-r fit of W (computed once), Q = quantize(W − L⁽¹⁾), then the best rank-r
    fit of W − Q; the error of that pair (in the same objective space as lq_decompose) is
    the estimate. The full decomposition only improves on it (it keeps the best pair seen
    and this pair is among those it visits), so the ILP compares configurations on an
    upper bound of the same quantity. Cost per quantizer: one quantization, one product
    by the whitening factor (output error only) and one rank-r randomized SVD.
    """
    m, n = w.shape
    check_rank(m, n, rank, "the LQ-LoRA matrix", zero_ok=True)
    w = w.float()
    r = c = L = None
    if row_weight is not None:
        r, _ = linalg.positive_weights(row_weight.to(w.device))
    if col_weight is not None:
        c, _ = linalg.positive_weights(col_weight.to(w.device))
    if whiten is not None:
        L = whiten.to(device=w.device, dtype=torch.float64)
    obj = _Objective(m, n, r, c, L)
    if rank > 0:
        a0, b0, _ = obj.lowrank(obj.apply(w), rank, generator, svd_method)
        base = w - (b0 @ a0).float()
    else:
        base = w
    out = []
    for deq, _ in quantize_all(base):
        # the residual's product by the whitening in float32 (an estimate; 4x cheaper than
        # the float64 product, the residual formed first so nothing cancels)
        p_res = obj.apply(w - deq, torch.float32)
        err = float(p_res.pow(2).sum())
        if rank > 0:
            s = linalg._svd64(p_res, rank, generator, svd_method, n_iter=2)[1]
            err -= float(s.pow(2).sum())
        out.append(max(err, 0.0))
    return out
