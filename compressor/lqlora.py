"""LQ-LoRA (Guo et al. 2023): W ≈ Q + L with Q NormalFloat-quantized and L = BA of rank r.

Three pure pieces:

* ``lq_decompose`` — the alternating algorithm. L = best rank-r approximation of W − Q,
  then Q = quantize(W − L), repeated while the error falls; the best (Q, L) pair seen is
  kept. With √Fisher row / column weights (r, c) the error is ‖diag(r)(W − Q − L)diag(c)‖_F,
  whose rank-r minimizer is exact: SVD of diag(r)(W − Q)diag(c), then divide the weights out.
  The quantizer itself stays unweighted (NF is data-free), as in the paper.
* ``candidate_configs`` / ``config_bits`` — the (NF bits, block size) menu and what each
  costs per weight, counted from the tensors the parts actually store.
* ``ilp_allocate`` — one configuration per matrix minimizing the summed error under a
  global bits-per-weight budget: a multiple-choice knapsack solved exactly as a binary ILP
  by HiGHS (``scipy.optimize.milp``).
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import linalg
from .errors import UserError

Quantizer = Callable[[torch.Tensor], tuple[torch.Tensor, Any]]


# --- the alternating decomposition ------------------------------------------------------

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
    if not 0 <= rank <= min(m, n):
        raise UserError(f"LQ-LoRA rank {rank} does not fit a {m}x{n} matrix; "
                        f"use --rank between 0 and {min(m, n)}")
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


# --- the configuration menu and its cost ------------------------------------------------

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
    from . import quant

    def run(x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        q = quant.quantize_nf(x, bits=cfg.bits, block_size=cfg.block_size,
                              double_quant=cfg.double_quant)
        return quant.dequantize_nf(q), q
    return run


def candidate_configs(nf_bits: Sequence[int] = DEFAULT_NF_BITS,
                      block_sizes: Sequence[int] = DEFAULT_BLOCK_SIZES,
                      double_quant: bool = True) -> list[NFConfig]:
    """The LQ-LoRA menu: NF{2,3,4,8} × first-level blocks {16..256}, 8-bit second-level scales.

    The paper searches b0 ∈ {2,3,4,8} and B0 ∈ {8,16,32,64} with 8-bit double quantization
    over a few second-level block sizes; here the second level is whatever
    ``quant.quantize_nf(double_quant=True)`` uses (one choice), and the first-level blocks
    span 16..256 so low budgets (large blocks) stay reachable.
    """
    return [NFConfig(b, bs, double_quant) for b in nf_bits for bs in block_sizes]


def _nf_part_bytes(cfg: NFConfig, m: int, n: int) -> int:
    """Bytes the NF part would store for an m×n matrix — from the part itself.

    One source of truth: the part is built with ``NFQuantPart.from_spec`` (the same path a
    checkpoint load takes) on the meta device, so no memory is touched, and its buffers are
    counted. A change in the part's layout changes this count with it.
    """
    from .modules.quantized import NFQuantPart
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
    from .modules.lowrank import LowRankPart
    nbytes = _nf_part_bytes(cfg, m, n)
    if rank > 0:
        with torch.device("meta"):
            low = LowRankPart.from_spec({"type": "lowrank", "out": m, "in": n, "rank": rank},
                                        lowrank_dtype)
        nbytes += low.stored_bytes()
    return 8.0 * nbytes / (m * n)


# --- the integer program ----------------------------------------------------------------

def ilp_allocate(errors: Any, bits: Any, numels: Any, budget_bits_per_weight: float,
                 time_limit: float = 60.0) -> tuple[list[int], dict[str, Any]]:
    """Pick one configuration per matrix: min Σ errors[i, j] s.t. mean bits ≤ budget.

    errors, bits: (n_mat, n_cfg) — any per-matrix error the caller wants summed (the LQ-LoRA
    method passes relative errors times the matrix's share of the weights) and bits per
    weight of each choice; numels: (n_mat,). Binary x_ij with Σ_j x_ij = 1 and
    Σ_ij x_ij·bits_ij·numel_i ≤ budget·Σ_i numel_i (divided by Σ numel for conditioning).
    The best uniform configuration that fits is a feasible point: if the solver stops early
    with something worse, that point is returned instead (info["fallback"]).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix, kron

    err = np.asarray(errors, dtype=np.float64)
    cost = np.asarray(bits, dtype=np.float64)
    num = np.asarray(numels, dtype=np.float64).reshape(-1)
    if err.ndim != 2 or err.shape != cost.shape or num.shape != (err.shape[0],):
        raise ValueError(f"errors {err.shape}, bits {cost.shape} and numels {num.shape} "
                         f"do not agree: expected (n_mat, n_cfg), (n_mat, n_cfg), (n_mat,)")
    if not (np.isfinite(err).all() and np.isfinite(cost).all() and (num > 0).all()):
        raise ValueError("errors and bits must be finite and numels positive")
    k, c = err.shape
    share = num / num.sum()
    wcost = cost * share[:, None]                       # contribution to the mean bits
    min_bits = float(wcost.min(axis=1).sum())
    max_bits = float(wcost.max(axis=1).sum())
    budget = float(budget_bits_per_weight)
    if budget < min_bits:
        raise UserError(f"the budget {budget:.4f} bits/weight is below the smallest "
                        f"configuration {min_bits:.4f}; raise --bits")

    rows = np.arange(k)

    def total(choice: np.ndarray) -> tuple[float, float]:
        return float(err[rows, choice].sum()), float(wcost[rows, choice].sum())

    # Safety net and comparison point: the best single configuration that fits.
    uniform_best = None
    for j in range(c):
        e, bj = total(np.full(k, j))
        if bj <= budget and (uniform_best is None or e < uniform_best[0]):
            uniform_best = (e, j)

    scale = float(np.abs(err).max()) or 1.0
    a_eq = kron(csr_matrix(np.eye(k)), csr_matrix(np.ones((1, c))))
    ub = budget
    choice = None
    status = "not run"
    for _ in range(4):                                 # tighten if rounding overshoots
        res = milp(err.ravel() / scale, integrality=np.ones(k * c),
                   bounds=Bounds(0, 1),
                   constraints=[LinearConstraint(a_eq, 1, 1),
                                LinearConstraint(wcost.reshape(1, -1), -np.inf, ub)],
                   options={"time_limit": time_limit, "mip_rel_gap": 1e-9})
        status = res.message
        if res.x is None:
            break
        cand = res.x.reshape(k, c).argmax(axis=1)
        _, b_cand = total(cand)
        if b_cand <= budget:
            choice = cand
            break
        ub -= (b_cand - budget) + 1e-12 * max(1.0, budget)
    fallback = None
    if choice is None or (uniform_best is not None and total(choice)[0] > uniform_best[0]):
        if uniform_best is not None:
            choice, fallback = np.full(k, uniform_best[1]), "uniform"
        else:  # only reachable if HiGHS failed: cheapest choice per matrix always fits
            choice, fallback = wcost.argmin(axis=1), "cheapest"
    e, b_ach = total(choice)
    info = {"solver": "highs", "status": str(status), "objective": e,
            "achieved_bits": b_ach, "budget": budget, "min_bits": min_bits,
            "max_bits": max_bits, "fallback": fallback,
            "uniform_best_objective": None if uniform_best is None else uniform_best[0]}
    return [int(x) for x in choice], info
