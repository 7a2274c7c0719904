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

from typing import Any, Callable

import torch

# Elements (float64) one OMP chunk may hold: bounds memory for wide layers on any device.
DEFAULT_MAX_ELEMS = 1 << 25
# During selection, a new atom whose squared distance to the span of the chosen ones is
# below this fraction of its squared norm counts as dependent: its slot is made inert.
DEPENDENT_TOL = 1e-10          # float64 selection
DEPENDENT_TOL_FP32 = 1e-4      # float32 selection (rounding of ‖L⁻¹g‖² is ~t·1e-7)
# |cos| between two atoms above which the later one is treated as a wasted duplicate.
DUPLICATE_COS = 0.99
# Iterative refinement of the float32 OMP solve, and the relative residual above which a
# signal's coefficients are re-solved by a float64 Cholesky instead.
REFINE_STEPS = 1
REFINE_TOL = 1e-9


def batch_omp(D: torch.Tensor, Y: torch.Tensor, s: int, *, block: int = 1,
              max_elems: int = DEFAULT_MAX_ELEMS) -> tuple[torch.Tensor, torch.Tensor]:
    """s-sparse codes of every column of Y over the unit-norm atoms of D, all at once.

    Greedy: each step adds, per signal, the ``block`` atoms most correlated with the
    residual (never one already chosen); the coefficients are the least-squares fit on
    the chosen support. block=1 is orthogonal matching pursuit; block>1 is its
    generalized form (gOMP, Wang, Kwon & Shim 2012): s/block steps instead of s, which
    is what makes large s affordable (the per-step work is memory-bound). The residual
    is never formed: the correlations live in atom space (G = DᵀD), see ``_omp_select``.
    Selection runs in float32 (it only ranks atoms); the coefficients are its float32
    solve refined in float64 (``_refined``). Signals are processed in chunks
    of at most ``max_elems`` working elements.

    Returns idx (N, s) int64 and coef (N, s) float64.
    """
    if D.ndim != 2 or Y.ndim != 2 or D.shape[0] != Y.shape[0]:
        raise ValueError(f"D (d, k) and Y (d, N) must share d: got {tuple(D.shape)}, "
                         f"{tuple(Y.shape)}")
    k, N = D.shape[1], Y.shape[1]
    if not 1 <= s <= k:
        raise ValueError(f"sparsity s={s} must be in 1..{k} (the number of atoms)")
    if block < 1:
        raise ValueError(f"block={block} must be >= 1")
    D64 = D.detach().to(torch.float64)
    G = D64.mT @ D64
    G32 = G.to(torch.float32)
    chunk = _chunk_size(N, s, k, max_elems)
    idx_out = torch.empty(N, s, dtype=torch.long, device=D.device)
    coef_out = torch.empty(N, s, dtype=torch.float64, device=D.device)
    for start in range(0, N, chunk):
        stop = min(N, start + chunk)
        A = Y[:, start:stop].detach().to(torch.float64).mT @ D64    # (n, k) = (Dᵀy)ᵀ
        idx, M, z = _omp_select(G32, A.to(torch.float32), s, block)
        idx_out[start:stop] = idx
        c0 = torch.bmm(M.mT, z[..., None])[..., 0].to(torch.float64)      # c = L⁻ᵀL⁻¹b

        def solve32(r: torch.Tensor, M: torch.Tensor = M) -> torch.Tensor:
            return torch.bmm(M.mT, torch.bmm(M, r[..., None]))[..., 0]

        coef_out[start:stop] = _refined(G, A, idx, c0, solve32)
    return idx_out, coef_out


def ls_on_support(D: torch.Tensor, Y: torch.Tensor, idx: torch.Tensor, *,
                  max_elems: int = DEFAULT_MAX_ELEMS) -> torch.Tensor:
    """Least-squares coefficients (N, s) float64 of each column of Y on its fixed support.

    Lets K-SVD's final codes be at least as good as the codes its last atom sweep left.
    A float32 Cholesky of each support Gram, refined to float64 (``_refined``).
    """
    D64 = D.detach().to(torch.float64)
    G = D64.mT @ D64
    G32 = G.to(torch.float32)
    N, s = idx.shape
    out = torch.empty(N, s, dtype=torch.float64, device=D.device)
    chunk = _chunk_size(N, s, D.shape[1], max_elems)
    eye = torch.eye(s, dtype=torch.float32, device=D.device)
    for start in range(0, N, chunk):
        A = Y[:, start:start + chunk].detach().to(torch.float64).mT @ D64
        sub = idx[start:start + chunk]
        L, info = torch.linalg.cholesky_ex(G32[sub[:, :, None], sub[:, None, :]])
        ok = info == 0
        L = torch.where(ok[:, None, None], L, eye)    # keeps the solve finite

        def solve32(r: torch.Tensor, L: torch.Tensor = L) -> torch.Tensor:
            return torch.cholesky_solve(r[..., None], L)[..., 0]

        c0 = solve32(A.gather(1, sub).to(torch.float32)).to(torch.float64)
        # a Gram whose float32 Cholesky failed goes to the float64 fallback
        c0 = torch.where(ok[:, None], c0, torch.full_like(c0, float("nan")))
        out[start:start + chunk] = _refined(G, A, sub, c0, solve32)
    return out


def _chunk_size(N: int, s: int, k: int, max_elems: int) -> int:
    return max(1, min(N, max_elems // (2 * s * s + 5 * k + 4 * s)))


def _refined(G: torch.Tensor, A: torch.Tensor, idx: torch.Tensor, c: torch.Tensor,
             solve32: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Float64 least-squares coefficients (n, s) on each support from a float32 solve.

    ``c`` is the float32 solution of G_S c = A_S (as float64) and ``solve32`` applies the
    same float32 inverse to a residual: REFINE_STEPS of iterative refinement (float64
    residual, float32 correction) bring c to float64 accuracy at O(s²) a signal instead of
    a float64 Cholesky's O(s³). The residual is one GEMM, (c scattered onto the atoms)·G,
    not a gather of each support's Gram. Signals whose refined residual is still large
    (a support too ill-conditioned for float32) or not finite fall back to
    ``_support_lstsq``. (OMP's inert slots come in as 0; refinement moves them only by
    their residual correlation, ~0 since such an atom lies in the span of the others.)
    """
    n, k = A.shape
    b = A.gather(1, idx)
    spread = torch.zeros(n, k, dtype=torch.float64, device=A.device)

    def residual(c: torch.Tensor) -> torch.Tensor:
        spread.zero_().scatter_add_(1, idx, c)
        return b - (spread @ G).gather(1, idx)

    for _ in range(REFINE_STEPS):
        c = c + solve32(residual(c).to(torch.float32)).to(torch.float64)
    scale = torch.linalg.vector_norm(b, dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    bad = ~(torch.linalg.vector_norm(residual(c), dim=1) <= REFINE_TOL * scale)  # NaN: bad
    if bool(bad.any()):
        c[bad] = _support_lstsq(G, A[bad], idx[bad])
    return c


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


def _omp_select(G: torch.Tensor, A: torch.Tensor, s: int, block: int = 1
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (g)OMP supports (n, s) for n signals, given G = DᵀD (k, k) and A = (DᵀY)ᵀ (n, k).

    Gram-Schmidt in coefficient space: M = L⁻¹ (inverse Cholesky factor of the support
    Gram) grows by a block of rows a step, its rows being the orthonormalized atoms
    q_t = D_S M[t]ᵀ. For a new block B on support S: W = L⁻¹G_SB, the Schur complement
    C = G_BB − WᵀW is orthonormalized within the block (P = R⁻¹, ``_orthonormalize``),
    and the new rows of L⁻¹ are [−P Wᵀ L⁻¹, P]. With z = L⁻¹b (entries fixed once
    computed), the correlations lose the block's terms, corr ← corr − (Σ_B z_j q_j)ᵀ G:
    one GEMM a step and no triangular solves (batched small solves are slow on CPU).
    Runs in the dtype of the inputs. A new atom (numerically) in the span of the chosen
    ones gets an inert slot (row e_j of L⁻¹, z_j = 0, decoupled from later atoms).

    Returns idx (n, s), M (n, s, s) and z (n, s), so G_S c = A_S is c = Mᵀz.
    """
    n, k = A.shape
    dev, dt = A.device, A.dtype
    tol = DEPENDENT_TOL if dt == torch.float64 else DEPENDENT_TOL_FP32
    idx = torch.zeros(n, s, dtype=torch.long, device=dev)
    live = torch.zeros(n, s, dtype=dt, device=dev)    # 1 = slot holds an independent atom
    M = torch.zeros(n, s, s, dtype=dt, device=dev)    # L⁻¹ of the support Gram
    z = torch.zeros(n, s, dtype=dt, device=dev)       # L⁻¹ b
    used = torch.zeros(n, k, dtype=torch.bool, device=dev)
    V = torch.zeros(n, k, dtype=dt, device=dev)       # Σ_B z_j M[j] scattered onto atoms
    gdiag = torch.diagonal(G)
    corr = A.clone()
    t = 0
    while t < s:
        m = min(block, s - t)
        B = corr.abs().masked_fill_(used, -1.0).topk(m, dim=1, sorted=True).indices
        idx[:, t:t + m] = B
        used.scatter_(1, B, True)
        C = G[B[:, :, None], B[:, None, :]]                               # (n, m, m)
        bB = A.gather(1, B)
        if t > 0:
            Mt = M[:, :t, :t]
            GSB = G[idx[:, :t, None], B[:, None, :]] * live[:, :t, None]   # inert rows cut
            W = torch.bmm(Mt, GSB)                                        # L⁻¹ G_SB (n, t, m)
            C = C - torch.bmm(W.mT, W)
            bB = bB - torch.bmm(W.mT, z[:, :t, None])[..., 0]
        P, ok = _orthonormalize(C, gdiag[B], tol)
        okf = ok.to(dt)
        zB = torch.bmm(P, bB[..., None])[..., 0] * okf
        if t > 0:
            W = W * okf[:, None, :]                                      # inert: decoupled
            M[:, t:t + m, :t] = -torch.bmm(P, torch.bmm(W.mT, Mt))
        M[:, t:t + m, t:t + m] = P
        live[:, t:t + m] = okf
        z[:, t:t + m] = zB
        t += m
        if t < s:
            v = torch.bmm(zB[:, None, :], M[:, t - m:t, :t])[:, 0, :]
            V.zero_().scatter_(1, idx[:, :t], v)
            corr -= V @ G
    return idx, M, z


def _orthonormalize(C: torch.Tensor, gaa: torch.Tensor, tol: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential Gram-Schmidt of m vectors given their Gram C (n, m, m): P (n, m, m)
    lower triangular with P C Pᵀ = I on the independent ones, and ok (n, m). Vector j is
    dependent when its squared distance to the span of the earlier ones is at most
    tol·gaa[j] (gaa: the atoms' own squared norms); its row of P is e_j and later vectors
    ignore it."""
    n, m, _ = C.shape
    P = torch.zeros_like(C)
    ok = torch.zeros(n, m, dtype=torch.bool, device=C.device)
    okf = torch.zeros(n, m, dtype=C.dtype, device=C.device)
    for j in range(m):
        if j == 0:
            w = C.new_zeros(n, 0)
            d2 = C[:, 0, 0]
        else:
            Pj = P[:, :j, :j]
            g = C[:, :j, j] * okf[:, :j]
            w = torch.bmm(Pj, g[..., None])[..., 0]
            d2 = C[:, j, j] - (w * w).sum(dim=1)
        ok[:, j] = d2 > tol * gaa[:, j].clamp_min(torch.finfo(C.dtype).tiny)
        okf[:, j] = ok[:, j].to(C.dtype)
        delta = torch.where(ok[:, j], d2.clamp_min(0).sqrt(), torch.ones_like(d2))
        if j > 0:
            P[:, j, :j] = -(okf[:, j] / delta)[:, None] * torch.bmm(w[:, None, :], Pj)[:, 0, :]
        P[:, j, j] = 1.0 / delta
    return P, ok


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
