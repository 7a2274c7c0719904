"""Sparse coding: batched orthogonal matching pursuit and K-SVD dictionary learning.

Pure tensor math on the device of the inputs. Signals are the COLUMNS of Y (d, N); a
code is (idx, coef), each (N, s): signal n ≈ Σ_j coef[n, j] · D[:, idx[n, j]].
Precision: OMP ranks atoms in float32 (a near-tie picks either atom, both fine) but every
coefficient is a float64 least-squares solve, and K-SVD keeps D, the codes and its error
log in float64 (the error is what convergence is judged by).

References: Rubinstein, Zibulevsky, Elad 2008, "Efficient implementation of the K-SVD
algorithm using Batch Orthogonal Matching Pursuit" (Gram-based OMP with a progressive
Cholesky factor; the approximate rank-1 atom update); Aharon, Elad, Bruckstein 2006 (K-SVD).
"""

from __future__ import annotations

from typing import Any

import torch

# Elements (float64) one OMP chunk may hold: bounds memory for wide layers on any device.
DEFAULT_MAX_ELEMS = 1 << 25
# During selection, a new atom whose squared distance to the span of the chosen ones is
# below this fraction of its squared norm counts as dependent: its slot is made inert.
DEPENDENT_TOL = 1e-10          # float64 selection
DEPENDENT_TOL_FP32 = 1e-4      # float32 selection (rounding of ‖L⁻¹g‖² is ~t·1e-7)
# |cos| between two atoms above which the later one is treated as a wasted duplicate.
DUPLICATE_COS = 0.99


def batch_omp(D: torch.Tensor, Y: torch.Tensor, s: int, *,
              max_elems: int = DEFAULT_MAX_ELEMS) -> tuple[torch.Tensor, torch.Tensor]:
    """s-sparse codes of every column of Y over the unit-norm atoms of D, all at once.

    Greedy: each of the s steps picks, per signal, the atom most correlated with the
    residual (never one already chosen); the coefficients are the least-squares fit on
    the chosen support. The residual is never formed: the correlations live in atom space
    (G = DᵀD), see ``_omp_select``. Selection runs in float32 (it only ranks atoms); the
    returned coefficients are solved in float64. Signals are processed in chunks of at
    most ``max_elems`` working elements.

    Returns idx (N, s) int64 and coef (N, s) float64.
    """
    if D.ndim != 2 or Y.ndim != 2 or D.shape[0] != Y.shape[0]:
        raise ValueError(f"D (d, k) and Y (d, N) must share d: got {tuple(D.shape)}, "
                         f"{tuple(Y.shape)}")
    k, N = D.shape[1], Y.shape[1]
    if not 1 <= s <= k:
        raise ValueError(f"sparsity s={s} must be in 1..{k} (the number of atoms)")
    D64 = D.detach().to(torch.float64)
    G = D64.mT @ D64
    G32 = G.to(torch.float32)
    chunk = _chunk_size(N, s, k, max_elems)
    idx_out = torch.empty(N, s, dtype=torch.long, device=D.device)
    coef_out = torch.empty(N, s, dtype=torch.float64, device=D.device)
    for start in range(0, N, chunk):
        stop = min(N, start + chunk)
        A = Y[:, start:stop].detach().to(torch.float64).mT @ D64    # (n, k) = (Dᵀy)ᵀ
        idx = _omp_select(G32, A.to(torch.float32), s)
        idx_out[start:stop] = idx
        coef_out[start:stop] = _support_lstsq(G, A, idx)
    return idx_out, coef_out


def ls_on_support(D: torch.Tensor, Y: torch.Tensor, idx: torch.Tensor, *,
                  max_elems: int = DEFAULT_MAX_ELEMS) -> torch.Tensor:
    """Least-squares coefficients (N, s) float64 of each column of Y on its fixed support.

    Lets K-SVD's final codes be at least as good as the codes its last atom sweep left.
    """
    D64 = D.detach().to(torch.float64)
    G = D64.mT @ D64
    N, s = idx.shape
    out = torch.empty(N, s, dtype=torch.float64, device=D.device)
    chunk = _chunk_size(N, s, D.shape[1], max_elems)
    for start in range(0, N, chunk):
        A = Y[:, start:start + chunk].detach().to(torch.float64).mT @ D64
        out[start:start + chunk] = _support_lstsq(G, A, idx[start:start + chunk])
    return out


def _chunk_size(N: int, s: int, k: int, max_elems: int) -> int:
    return max(1, min(N, max_elems // (2 * s * s + 5 * k + 4 * s)))


def _support_lstsq(G: torch.Tensor, A: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Solve G_S c = A_S per signal (float64 Cholesky). A support with dependent atoms
    (chosen once a signal is already exact) is ridged by a relative 1e-10, which keeps the
    fit and bounds the coefficients."""
    Gs = G[idx[:, :, None], idx[:, None, :]]
    b = A.gather(1, idx)[..., None]
    scale = torch.diagonal(Gs, dim1=-2, dim2=-1).mean(dim=-1).clamp_min(1e-300)
    eye = torch.eye(idx.shape[1], dtype=G.dtype, device=G.device)
    ridge = 1e-10 * scale[:, None, None] * eye
    L, info = torch.linalg.cholesky_ex(Gs + ridge)
    if bool((info != 0).any()):        # rounding made a near-singular support indefinite
        L, info = torch.linalg.cholesky_ex(Gs + 1e4 * ridge)
    if bool((info != 0).any()):
        return torch.linalg.lstsq(Gs, b).solution[..., 0]
    return torch.cholesky_solve(b, L)[..., 0]


def _omp_select(G: torch.Tensor, A: torch.Tensor, s: int) -> torch.Tensor:
    """The OMP supports (n, s) for n signals, given G = DᵀD (k, k) and A = (DᵀY)ᵀ (n, k).

    Gram-Schmidt in coefficient space: M = L⁻¹ (inverse Cholesky factor of the support
    Gram) grows by one row a step, its rows being the orthonormalized atoms q_t = D_S M[t]ᵀ.
    With z = L⁻¹ b (entries fixed once computed), the residual correlations lose one term
    a step, corr ← corr − (Dᵀq_t) z_t, and Dᵀq_t = G_S M[t]ᵀ is one GEMM: no triangular
    solves (batched small solves are slow on CPU). Runs in the dtype of the inputs.
    A new atom (numerically) in the span of the chosen ones gets an inert slot.
    """
    n, k = A.shape
    dev, dt = A.device, A.dtype
    tol = DEPENDENT_TOL if dt == torch.float64 else DEPENDENT_TOL_FP32
    rows = torch.arange(n, device=dev)
    idx = torch.zeros(n, s, dtype=torch.long, device=dev)
    live = torch.zeros(n, s, dtype=dt, device=dev)    # 1 = slot holds an independent atom
    M = torch.zeros(n, s, s, dtype=dt, device=dev)    # L⁻¹ of the support Gram
    z = torch.zeros(n, s, dtype=dt, device=dev)       # L⁻¹ b
    used = torch.zeros(n, k, dtype=torch.bool, device=dev)
    Q = torch.zeros(n, k, dtype=dt, device=dev)       # M[t] scattered onto the atoms
    gdiag = torch.diagonal(G)
    corr = A.clone()
    for t in range(s):
        a = corr.abs().masked_fill_(used, -1.0).argmax(dim=1)
        idx[:, t] = a
        if t + 1 == s:
            break
        used[rows, a] = True
        gaa = gdiag[a]
        if t == 0:
            w = torch.zeros(n, 0, dtype=dt, device=dev)
            d2 = gaa
        else:
            g = G[idx[:, :t], a[:, None]] * live[:, :t]    # inert slots decoupled
            Mt = M[:, :t, :t]
            # L⁻¹ g, the new row of L (as gᵀL⁻ᵀ: twice as fast as L⁻¹g on CPU's bmm)
            w = torch.bmm(g[:, None, :], Mt.mT)[:, 0, :]
            d2 = gaa - (w * w).sum(dim=1)
        ok = d2 > tol * gaa.clamp_min(torch.finfo(dt).tiny)
        okf = ok.to(dt)
        delta = torch.where(ok, d2.clamp_min(0).sqrt(), torch.ones_like(d2))
        # New row of L⁻¹: [-(wᵀ L⁻¹)/δ, 1/δ]; an inert (dependent) slot gets [0, 1].
        if t > 0:
            M[:, t, :t] = -(okf / delta)[:, None] * torch.bmm(w[:, None, :], Mt)[:, 0, :]
        M[:, t, t] = 1.0 / delta
        live[:, t] = okf
        zt = okf * (A[rows, a] - (w * z[:, :t]).sum(dim=1)) / delta
        z[:, t] = zt
        Q.zero_()
        Q.scatter_(1, idx[:, :t + 1], M[:, t, :t + 1])
        corr -= (Q @ G) * zt[:, None]
    return idx


def dense_codes(idx: torch.Tensor, coef: torch.Tensor, k: int) -> torch.Tensor:
    """The codes as a dense (N, k) matrix (duplicates in a row are summed)."""
    X = torch.zeros(idx.shape[0], k, dtype=coef.dtype, device=coef.device)
    return X.scatter_add_(1, idx, coef)


def residual_norms(D: torch.Tensor, Y: torch.Tensor, idx: torch.Tensor,
                   coef: torch.Tensor) -> torch.Tensor:
    """‖y_n − D x_n‖ per signal (N,), float64."""
    Y64 = Y.detach().to(torch.float64)
    R = Y64 - D.to(torch.float64) @ dense_codes(idx, coef.to(torch.float64), D.shape[1]).mT
    return torch.linalg.vector_norm(R, dim=0)


def ksvd(Y: torch.Tensor, k: int, s: int, iters: int, generator: torch.Generator,
         init: torch.Tensor | None = None, *, power_iters: int = 1,
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
    if Y.ndim != 2:
        raise ValueError(f"Y must be (d, N), got shape {tuple(Y.shape)}")
    d, N = Y.shape
    if not 1 <= s <= k:
        raise ValueError(f"sparsity s={s} must be in 1..k={k}")
    if s > d:
        raise ValueError(f"sparsity s={s} exceeds the signal dimension d={d}")
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
        idx, coef = batch_omp(D, Y64, s, max_elems=max_elems)
        rel_errors.append(float(torch.linalg.vector_norm(
            residual_norms(D, Y64, idx, coef))) / ynorm)
        D, X, counts = _sweep_atoms(Y64, D, idx, coef, power_iters)
        if it + 1 < iters:  # a replaced atom needs a later iteration to earn its place
            free = _atoms_to_free(D, counts)
            if free:
                D = _replace_atoms(Y64, D, X, idx, free, generator)
                replaced += len(free)

    new_idx, new_coef = batch_omp(D, Y64, s, max_elems=max_elems)
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


def _initial_dictionary(Y: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Top left singular vectors of Y: the best k-dimensional subspace to start from.

    When k > min(d, N) the remaining atoms are distinct signals drawn with ``generator``
    (normalized; random unit vectors if there are not enough signals).
    """
    d, N = Y.shape
    U = torch.linalg.svd(Y, full_matrices=False).U[:, :k]
    extra = k - U.shape[1]
    if extra <= 0:
        return U.contiguous()
    perm = torch.randperm(N, generator=generator, device=generator.device).to(Y.device)
    cols = Y[:, perm[:extra]]
    if cols.shape[1] < extra:
        cols = torch.cat([cols, torch.zeros(d, extra - cols.shape[1], dtype=Y.dtype,
                                            device=Y.device)], dim=1)
    return _normalize_columns(torch.cat([U, cols], dim=1), generator).contiguous()


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


def index_dtype(upper: int) -> torch.dtype:
    """Index dtype for values 0..upper-1: int16 when upper < 32768, else int32 (the
    project-wide convention for stored indices)."""
    return torch.int16 if upper < 32768 else torch.int32
