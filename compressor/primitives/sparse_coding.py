"""Sparse coding over a dictionary: batched (generalized) OMP and least squares on a support.

Pure tensor math on the device of its inputs. Y holds one signal per column; D one atom per
column; codes are (indices, coefficients) with s non-zeros per signal.
"""

from __future__ import annotations

from typing import Callable

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


def check_dictionary_problem(Y: torch.Tensor, k: int, s: int) -> tuple[int, int]:
    """(d, N) of Y after the checks every dictionary learner shares: Y is (d, N) and
    1 <= s <= min(k, d)."""
    if Y.ndim != 2:
        raise ValueError(f"Y must be (d, N), got shape {tuple(Y.shape)}")
    d, N = Y.shape
    if not 1 <= s <= k:
        raise ValueError(f"sparsity s={s} must be in 1..k={k}")
    if s > d:
        raise ValueError(f"sparsity s={s} exceeds the signal dimension d={d}")
    return d, N


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


def index_dtype(upper: int) -> torch.dtype:
    """Index dtype for values 0..upper-1: int16 when upper < 32768, else int32 (the
    project-wide convention for stored indices)."""
    return torch.int16 if upper < 32768 else torch.int32
