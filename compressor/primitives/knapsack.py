"""One choice per matrix under a bits budget: the multiple-choice knapsack behind LQ-LoRA's
allocation and the plan method, solved exactly as a binary ILP by HiGHS
(scipy.optimize.milp). Pure math: errors and prices in, one index per matrix out."""

from __future__ import annotations

from typing import Any

import numpy as np


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
        raise ValueError(f"the budget {budget:.4f} bits/weight is below the smallest "
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
