"""Per-matrix rank allocation for any low-rank method: uniform, or WeLore's global threshold.

WeLore (Jaiswal et al. 2024, "From GaLore to WeLore"): a matrix whose normalized singular
spectrum σ_i/σ_max is heavy-tailed (few large components) is a low-rank component (LRC)
and can be cut hard; a matrix with a flat spectrum (N-LRC) is better left dense. One
threshold t on σ_i/σ_max, shared by all matrices, turns that into ranks: each matrix
keeps its components with σ_i/σ_max ≥ t, and t is the lowest value whose total parameter
count fits the global budget. Heavy-tailed matrices thus get low ranks, flat ones high
ranks, and those whose rank would not save parameters stay dense.
"""

from __future__ import annotations

from typing import Any

import torch

from compressor.primitives.linalg import rank_from_ratio, singular_values


def uniform_ranks(shapes: dict[str, tuple[int, int]], ratio: float) -> dict[str, int]:
    """The same parameter ratio for every matrix (README, Conventions: budget): k = floor((1-R)mn/(m+n))."""
    return {name: rank_from_ratio(m, n, ratio, name=name) for name, (m, n) in shapes.items()}


def _cost(k: int, m: int, n: int) -> int:
    """Parameters of a rank-k factorization, or of the dense matrix when that is cheaper.

    At least rank 1: a matrix is never dropped entirely.
    """
    return min(max(k, 1) * (m + n), m * n)


def _spectra(spectra: dict[str, torch.Tensor],
             shapes: dict[str, tuple[int, int]] | None
             ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    """Normalized singular values (descending, CPU float64) and shapes per name."""
    norm: dict[str, torch.Tensor] = {}
    dims: dict[str, tuple[int, int]] = {}
    for name, t in spectra.items():
        if t.ndim == 2:
            s, dims[name] = singular_values(t), (int(t.shape[0]), int(t.shape[1]))
        elif t.ndim == 1:
            if shapes is None or name not in shapes:
                raise ValueError(f"{name}: singular values given without the matrix shape; "
                                 f"pass shapes={{name: (m, n)}}")
            s, dims[name] = t.detach().to(torch.float64), tuple(shapes[name])
        else:
            raise ValueError(f"{name}: expected a weight (2-D) or singular values (1-D)")
        s = torch.sort(s.cpu(), descending=True).values  # one transfer per matrix, planning only
        top = float(s[0]) if s.numel() else 0.0
        norm[name] = s / top if top > 0 else torch.zeros_like(s)
    return norm, dims


def welore_ranks(spectra: dict[str, torch.Tensor], ratio: float,
                 shapes: dict[str, tuple[int, int]] | None = None
                 ) -> tuple[dict[str, int | None], dict[str, Any]]:
    """WeLore ranks under one global budget of (1 - ratio) x Σ m·n parameters.

    ``spectra`` maps a name to its weight (out, in) or to its singular values (then give
    ``shapes``). Returns ({name: rank, or None for an N-LRC kept dense}, info). Search:
    bisection over the sorted normalized singular values for the lowest shared threshold
    whose total fits; then the leftover budget goes to the next-largest components one
    by one (skipping any that no longer fit), so the total is ≤ budget and within one rank
    step (m+n of some growable matrix) of it.
    """
    if not (0.0 <= ratio < 1.0):
        raise ValueError(f"ratio {ratio} is outside [0, 1): it is the fraction of parameters "
                        f"removed, e.g. 0.2 keeps 80%.")
    if not spectra:
        return {}, {"lrc": [], "n_lrc": [], "threshold": None, "budget": 0, "kept_params": 0,
                    "total_params": 0}
    norm, dims = _spectra(spectra, shapes)
    total = sum(m * n for m, n in dims.values())
    budget = int((1.0 - ratio) * total + 1e-6)
    floor_cost = sum(_cost(1, *dims[k]) for k in norm)
    if floor_cost > budget:
        raise ValueError(f"ratio {ratio} cannot be met with WeLore: even rank 1 everywhere "
                        f"keeps {floor_cost} of {total} parameters (budget {budget}); "
                        f"lower the ratio to at most {1 - floor_cost / total:.4f}.")

    def kept(t: float) -> dict[str, int]:
        # σ/σmax >= t, counted on the descending spectrum.
        return {k: int((v >= t).sum()) for k, v in norm.items()}

    def cost(ranks: dict[str, int]) -> int:
        return sum(_cost(r, *dims[k]) for k, r in ranks.items())

    # Candidate thresholds: every distinct normalized value, descending, so the kept
    # parameter count f(j) = cost(kept(cands[j])) is nondecreasing in j. Find the last j
    # with f(j) <= budget by bisection (invariant: f(lo) fits, f(hi) does not).
    cands = torch.unique(torch.cat(list(norm.values()))).flip(0)
    cands = cands[cands > 0].tolist()

    def f(j: int) -> int:
        return cost(kept(cands[j]))

    threshold: float | None = None
    ranks = {k: 1 for k in norm}  # fits: checked above
    if cands and f(0) <= budget:
        lo, hi = 0, len(cands) - 1
        if f(hi) <= budget:
            lo = hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if f(mid) <= budget else (lo, mid)
        threshold = cands[lo]
        ranks = kept(threshold)
    ranks = {k: max(r, 1) for k, r in ranks.items()}
    ranks = _fill(ranks, norm, dims, budget - cost(ranks))

    out: dict[str, int | None] = {}
    for k, r in ranks.items():
        m, n = dims[k]
        out[k] = None if r * (m + n) >= m * n else r
    kept_params = cost(ranks)
    info = {"lrc": [k for k, r in out.items() if r is not None],
            "n_lrc": [k for k, r in out.items() if r is None],
            "threshold": threshold, "budget": budget, "kept_params": kept_params,
            "total_params": total}
    return out, info


def _fill(ranks: dict[str, int], norm: dict[str, torch.Tensor],
          dims: dict[str, tuple[int, int]], leftover: int) -> dict[str, int]:
    """Spend the leftover budget on the largest not-yet-kept components, in global order."""
    ranks = dict(ranks)
    heads = {k: ranks[k] for k in ranks}  # next component index per matrix
    while leftover > 0:
        best, best_v, best_d = None, -1.0, 0
        for k, i in heads.items():
            m, n = dims[k]
            if i >= norm[k].numel() or ranks[k] * (m + n) >= m * n:
                continue  # exhausted, or already dense (more rank is free but pointless)
            d = _cost(ranks[k] + 1, m, n) - _cost(ranks[k], m, n)
            if d <= leftover and float(norm[k][i]) > best_v:
                best, best_v, best_d = k, float(norm[k][i]), d
        if best is None:
            break
        ranks[best] += 1
        heads[best] += 1
        leftover -= best_d
    return ranks
