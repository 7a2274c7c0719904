"""K-SVD dictionary learning (Aharon et al. 2006): OMP codes, then a sweep that refits one atom and its coefficients at a time; unused or duplicate atoms are replaced."""

from __future__ import annotations

from typing import Any

import torch

from compressor.primitives.sparse_coding import (
    DEFAULT_MAX_ELEMS,
    DUPLICATE_COS,
    batch_omp,
    check_dictionary_problem,
    dense_codes,
    ls_on_support,
    residual_norms,
)


def ksvd(Y: torch.Tensor, k: int, s: int, iters: int, generator: torch.Generator,
         init: torch.Tensor | None = None, *, power_iters: int = 1, block: int = 1,
         max_elems: int = DEFAULT_MAX_ELEMS
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Learn D (d, k) with unit-norm atoms and s-sparse codes so that Y ≈ D X.

    Each iteration: batch OMP for all signals, then a Gauss-Seidel sweep over the used
    atoms, each replaced by the top singular pair of its error matrix restricted to the
    signals that use it (support kept, coefficients updated with it). The rank-1 pair is
    computed by ``power_iters`` alternating steps warm-started at the current atom, so
    the error never increases. Between iterations (not after the last), unused atoms and
    near-duplicates (|cos| > DUPLICATE_COS) are replaced by the normalized
    worst-represented signals (a seeded random direction for an all-zero signal).

    ``init`` (d, k) is normalized and used as the starting dictionary; otherwise D starts
    from the top left singular vectors of Y (deterministic), completed, when k exceeds
    min(d, N), with normalized signals chosen with ``generator``.

    Returns D float64, idx (N, s) int64, coef (N, s) float64 and info
    {"rel_errors": ‖Y−DX‖/‖Y‖ after each iteration's coding and finally, "replaced_atoms"}.
    The final codes are, per signal, the better of a fresh OMP and a least-squares refit
    on the last sweep's support, so they are never worse than what the last sweep left.
    """
    d, N = check_dictionary_problem(Y, k, s)
    Y64 = Y.detach().to(torch.float64)
    if not bool(torch.isfinite(Y64).all()):
        raise ValueError("K-SVD input has NaN/Inf entries")
    ynorm = float(torch.linalg.vector_norm(Y64)) or 1.0
    if init is not None:
        if init.shape != (d, k):
            raise ValueError(f"init must be ({d}, {k}), got {tuple(init.shape)}")
        D = _normalize_columns(init.detach().to(device=Y.device, dtype=torch.float64).clone(),
                               generator)  # zero columns -> seeded random atoms
    else:
        D = _initial_dictionary(Y64, k, generator)

    rel_errors: list[float] = []
    replaced = 0
    idx = None
    for it in range(iters):
        idx, coef = batch_omp(D, Y64, s, block=block, max_elems=max_elems)
        rel_errors.append(float(torch.linalg.vector_norm(
            residual_norms(D, Y64, idx, coef))) / ynorm)
        D, X, counts = _sweep_atoms(Y64, D, idx, coef, power_iters)
        if it + 1 < iters:  # a replaced atom needs a later iteration to earn its place
            free = _atoms_to_free(D, counts)
            if free:
                D = _replace_atoms(Y64, D, X, idx, free, generator)
                replaced += len(free)

    new_idx, new_coef = batch_omp(D, Y64, s, block=block, max_elems=max_elems)
    if idx is not None:
        refit = ls_on_support(D, Y64, idx, max_elems=max_elems)
        old_err = residual_norms(D, Y64, idx, refit)
        new_err = residual_norms(D, Y64, new_idx, new_coef)
        keep_old = (old_err < new_err)[:, None]
        new_idx = torch.where(keep_old, idx, new_idx)
        new_coef = torch.where(keep_old, refit, new_coef)
    rel_errors.append(float(torch.linalg.vector_norm(
        residual_norms(D, Y64, new_idx, new_coef))) / ynorm)
    info = {"rel_errors": rel_errors, "final_rel_error": rel_errors[-1],
            "replaced_atoms": replaced, "iters": iters}
    return D, new_idx, new_coef, info


def _normalize_columns(D: torch.Tensor, generator: torch.Generator,
                       floor: float = 0.0) -> torch.Tensor:
    """Unit-norm columns; columns with norm <= floor become seeded random unit vectors."""
    norms = torch.linalg.vector_norm(D, dim=0)
    dead = norms <= floor
    if bool(dead.any()):
        D[:, dead] = _random_units(D.shape[0], int(dead.sum()), generator, D.device)
        norms = torch.linalg.vector_norm(D, dim=0)
    return D / norms


def _random_units(d: int, count: int, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    v = torch.randn(d, count, generator=generator, dtype=torch.float64,
                    device=generator.device).to(device)
    return v / torch.linalg.vector_norm(v, dim=0)


def _initial_dictionary(Y: torch.Tensor, k: int, generator: torch.Generator,
                        method: str = "svd") -> torch.Tensor:
    """Top left singular vectors of Y: the best k-dimensional subspace to start from.

    method "svd": a full SVD of Y; "eigh": the eigenvectors of the smaller Gram (YYᵀ, or
    YᵀY mapped back by Y and re-orthonormalized by QR), several times faster for the same
    subspace up to float64 rounding of the squared spectrum.
    When k > min(d, N) the remaining atoms are distinct signals drawn with ``generator``
    (normalized; random unit vectors if there are not enough signals).
    """
    d, N = Y.shape
    U = _top_left_singular(Y, k) if method == "eigh" else \
        torch.linalg.svd(Y, full_matrices=False).U[:, :k]
    extra = k - U.shape[1]
    if extra <= 0:
        return U.contiguous()
    perm = torch.randperm(N, generator=generator, device=generator.device).to(Y.device)
    cols = Y[:, perm[:extra]]
    if cols.shape[1] < extra:
        cols = torch.cat([cols, torch.zeros(d, extra - cols.shape[1], dtype=Y.dtype,
                                            device=Y.device)], dim=1)
    return _normalize_columns(torch.cat([U, cols], dim=1), generator).contiguous()


def _top_left_singular(Y: torch.Tensor, k: int) -> torch.Tensor:
    """The top min(k, d, N) left singular vectors of Y (d, N), by eigh of the smaller Gram."""
    d, N = Y.shape
    m = min(k, d, N)
    if d <= N:
        _, V = torch.linalg.eigh(Y @ Y.mT)
        return V.flip(-1)[:, :m].contiguous()
    _, V = torch.linalg.eigh(Y.mT @ Y)
    U = Y @ V.flip(-1)[:, :m]
    # QR keeps the span (column j of Q spans the first j of U): orthonormal, same order
    Q, R = torch.linalg.qr(U)
    return (Q * torch.sign(torch.diagonal(R)).masked_fill_(torch.diagonal(R) == 0, 1.0)
            ).contiguous()


def _sweep_atoms(Y: torch.Tensor, D: torch.Tensor, idx: torch.Tensor, coef: torch.Tensor,
                 power_iters: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One K-SVD dictionary sweep (Gauss-Seidel over the used atoms); supports stay fixed.

    For atom j with users ω, E_j = Y_ω − D X_ω + d_j x_jωᵀ is never formed: products
    with it use the dense codes of ω, so each atom costs O(d|ω| + k|ω| + dk).
    Returns the new D, the dense codes X (N, k) and how many signals use each atom.
    """
    k = D.shape[1]
    s = idx.shape[1]
    D = D.clone()
    X = dense_codes(idx, coef, k)                    # (N, k), kept in sync with the sweep
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=k)
    bounds = torch.cumsum(counts, 0).tolist()        # one host sync per sweep
    starts = [0] + bounds[:-1]
    for j in range(k):
        if bounds[j] == starts[j]:
            continue
        users = order[starts[j]:bounds[j]] // s       # distinct: OMP never repeats an atom
        Yw = Y[:, users]                               # (d, m)
        Xw = X[users]                                  # (m, k)
        dj = D[:, j]
        g_old = Xw[:, j]
        atom = dj
        g = Yw.mT @ atom - Xw @ (D.mT @ atom) + g_old * (dj @ atom)        # E_jᵀ d
        for _ in range(power_iters):
            u = Yw @ g - D @ (Xw.mT @ g) + dj * (g_old @ g)                 # E_j g
            nu = torch.linalg.vector_norm(u)
            atom = torch.where(nu > 0, u / nu.clamp_min(1e-300), atom)
            g = Yw.mT @ atom - Xw @ (D.mT @ atom) + g_old * (dj @ atom)
        D[:, j] = atom
        X[users, j] = g
    return D, X, counts


def _atoms_to_free(D: torch.Tensor, counts: torch.Tensor) -> list[int]:
    """Atoms that waste budget: unused ones and the later of two near-duplicates
    (K-SVD's "clear dictionary" step)."""
    cos = torch.triu((D.mT @ D).abs(), diagonal=1)
    bad = (counts == 0) | (cos > DUPLICATE_COS).any(dim=0)
    return bad.nonzero()[:, 0].tolist()


def _replace_atoms(Y: torch.Tensor, D: torch.Tensor, X: torch.Tensor, idx: torch.Tensor,
                   free: list[int], generator: torch.Generator) -> torch.Tensor:
    """Point the freed atoms at the worst-represented signals (normalized), as K-SVD does.

    The signal itself rather than its residual: in a stuck local minimum the residual is
    orthogonal to the atom that wrongly serves the signal, so it rarely wins OMP's race.
    """
    d = Y.shape[0]
    D = D.clone()
    X = X.clone()
    X[:, free] = 0.0
    err = residual_norms(D, Y, idx, X.gather(1, idx))
    worst = torch.argsort(err, descending=True, stable=True)[:len(free)]
    R = Y[:, worst].clone()
    if R.shape[1] < len(free):                       # fewer signals than atoms to replace
        R = torch.cat([R, R.new_zeros(d, len(free) - R.shape[1])], dim=1)
    # A (near-)zero signal carries no direction: draw a seeded one instead.
    floor = 1e-10 * float(torch.linalg.vector_norm(Y, dim=0).max())
    D[:, free] = _normalize_columns(R, generator, floor)
    return D
