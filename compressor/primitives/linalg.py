"""Linear algebra shared by the low-rank methods: ranks, truncated SVD, whitening.

Pure functions on tensors, on whatever device the inputs live. Decompositions run in
float64 because the small singular values / eigenvalues that truncation and whitening
depend on are lost in float32; results come back as float32 (or the dtype asked for).
Nothing here reads the global RNG: randomized routines take a ``torch.Generator``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

SvdMethod = Literal["full", "randomized"]


# --- budget ----------------------------------------------------------------------------

def rank_from_ratio(m: int, n: int, ratio: float, name: str | None = None) -> int:
    """Rank whose factors keep (1 - ratio) of an m x n matrix's parameters (README, Conventions).

    k(m+n) parameters replace m*n, so k = floor((1 - ratio) * m * n / (m + n)).
    """
    what = f"{name} ({m}x{n})" if name else f"a {m}x{n} matrix"
    if not (0.0 <= ratio < 1.0) or math.isnan(ratio):
        raise ValueError(f"ratio {ratio} for {what} is outside [0, 1): it is the fraction of "
                        f"parameters removed, e.g. 0.2 keeps 80%.")
    # The tiny epsilon keeps exact products (e.g. ratio 0.5 of 8x8 -> 2.0) from flooring
    # to one less because of binary rounding of the ratio.
    k = math.floor((1.0 - ratio) * m * n / (m + n) + 1e-9)
    if k < 1:
        raise ValueError(f"ratio {ratio} leaves rank {k} for {what}: lower the ratio "
                        f"(at most {1 - (m + n) / (m * n):.4f}) or give an explicit rank >= 1.")
    return k


def check_rank(m: int, n: int, rank: int, what: str | None = None, zero_ok: bool = False) -> None:
    """The one rank check: 1 <= rank <= min(m, n) (0 allowed with ``zero_ok``)."""
    low = 0 if zero_ok else 1
    if not (low <= rank <= min(m, n)):
        where = f"{what} ({m}x{n})" if what else f"a {m}x{n} matrix"
        raise ValueError(f"rank {rank} does not fit {where}: use a rank in {low}..{min(m, n)}.")


# --- SVD -------------------------------------------------------------------------------

def _range_finder(w: torch.Tensor, size: int, generator: torch.Generator | None,
                  n_iter: int) -> torch.Tensor:
    """Orthonormal basis (m, size) of w's dominant column space (Halko et al. 2011, alg. 4.4).

    QR after every product keeps the power iterations from collapsing onto the top
    singular vector in finite precision.
    """
    if generator is None:  # deterministic, and still never the global RNG
        generator = torch.Generator(device=w.device).manual_seed(0)
    omega = torch.randn(w.shape[1], size, generator=generator, dtype=torch.float64,
                        device=generator.device).to(w.device)
    q = torch.linalg.qr(w @ omega).Q
    for _ in range(n_iter):
        z = torch.linalg.qr(w.mT @ q).Q
        q = torch.linalg.qr(w @ z).Q
    return q


def _svd64(w: torch.Tensor, rank: int, generator: torch.Generator | None = None,
           method: SvdMethod = "full", oversample: int = 10,
           n_iter: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-``rank`` truncated SVD in float64 (inputs are cast, never modified)."""
    check_rank(*w.shape, rank)
    w64 = w.detach().to(torch.float64)
    if not bool(torch.isfinite(w64).all()):
        raise ValueError("matrix to factorize has NaN/Inf entries: check the weights and "
                        "the statistics (e.g. run in float32).")
    size = min(rank + oversample, *w64.shape)
    if method == "full" or size >= min(w64.shape):
        u, s, vh = torch.linalg.svd(w64, full_matrices=False)
    elif method == "randomized":
        q = _range_finder(w64, size, generator, n_iter)
        ub, s, vh = torch.linalg.svd(q.mT @ w64, full_matrices=False)
        u = q @ ub
    else:
        raise ValueError(f"unknown SVD method {method!r}: use 'full' or 'randomized'.")
    return sign_convention(u[:, :rank], s[:rank], vh[:rank])


def sign_convention(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD factors with each singular pair's sign fixed: the largest-magnitude entry of every
    left vector is positive. An SVD is unique only up to these signs, and LAPACK's choice
    moves with the last bits of the input (another summation order of the Gram, another
    rank count); fixed signs make factors agree in value, not only in the product. Exact:
    the product U·diag(S)·Vh is unchanged bit for bit (negation is exact)."""
    idx = u.abs().argmax(dim=0, keepdim=True)
    flip = torch.where(torch.gather(u, 0, idx) < 0, -1.0, 1.0).to(u.dtype)
    return u * flip, s, vh * flip.mT


def full_svd64(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The thin SVD of ``w`` in float64, with the sign convention above."""
    return sign_convention(*torch.linalg.svd(w.detach().to(torch.float64), full_matrices=False))


def truncated_svd(w: torch.Tensor, rank: int, generator: torch.Generator | None = None,
                  method: SvdMethod = "full", oversample: int = 10,
                  n_iter: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-k approximation factors U (m,k), S (k,), Vh (k,n), float32.

    ``randomized`` is a seeded range finder (``generator``; a fixed seed-0 generator when
    None) with ``n_iter`` power iterations: much cheaper when k << min(m, n), and exact
    when w has rank <= k + oversample.
    """
    u, s, vh = _svd64(w, rank, generator, method, oversample, n_iter)
    return u.float(), s.float(), vh.float()


def singular_values(w: torch.Tensor) -> torch.Tensor:
    """All singular values of w, descending, float64 (tails matter for rank allocation)."""
    return torch.linalg.svdvals(w.detach().to(torch.float64))


def lowrank_factors(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Split U diag(S) Vh into A = sqrt(S) Vh (k,n) and B = U sqrt(S) (m,k).

    The balanced split keeps both factors on the same scale, which matters once they are
    stored in float16 / bfloat16.
    """
    r = S.to(torch.float64).clamp_min(0).sqrt()
    B = U.to(torch.float64) * r
    A = r[:, None] * Vh.to(torch.float64)
    return A.to(dtype), B.to(dtype)


# --- whitening -------------------------------------------------------------------------

def _eigh_factor(g: torch.Tensor, floor: float) -> tuple[torch.Tensor, int]:
    """Lower-triangular L with L Lᵀ = Q max(Λ, floor) Qᵀ, and how many eigenvalues were floored.

    A symmetric square root Q Λ^½ is not triangular; QR of its transpose gives the
    triangular factor of the same matrix (Λ^½ Qᵀ = Q₂R  =>  Rᵀ R = Q Λ Qᵀ).
    """
    lam, q = torch.linalg.eigh(g)
    floored = int((lam < floor).sum())
    lam = lam.clamp_min(floor)
    r = torch.linalg.qr(lam.sqrt()[:, None] * q.mT).R
    sign = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(r.dtype)
    return (sign[:, None] * r).mT.contiguous(), floored


def whitening(gram: torch.Tensor, percdamp: float = 0.01) -> tuple[torch.Tensor, dict[str, Any]]:
    """Lower-triangular L (float64) with L Lᵀ = gram + damp·I, so that L⁻¹ gram L⁻ᵀ ≈ I.

    A singular Gram (dead channels, fewer tokens than channels) is normal: damp it by
    ``percdamp`` x mean diagonal; if Cholesky still fails, retry with 10x damping, then fall
    back to an eigendecomposition with eigenvalues floored. info = {damp (absolute value
    added to the diagonal), retries, method ("cholesky" | "eigh"), floored (eigenvalues
    raised to the floor), dead (zero diagonal entries)}.
    """
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be square, got shape {tuple(gram.shape)}")
    g = gram.detach().to(torch.float64)
    if not bool(torch.isfinite(g).all()):
        raise ValueError("the Gram matrix has NaN/Inf entries: the layer's inputs overflowed; "
                        "collect statistics in float32 or lower the sequence length.")
    g = (g + g.mT) / 2  # clone + symmetrize: fp32 accumulation is not exactly symmetric
    diag = torch.diagonal(g)
    dead = int((diag <= 0).sum())
    mean_diag = float(diag.mean())
    scale = mean_diag if mean_diag > 0 else 1.0  # an all-zero Gram still gets a factor
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    damp = percdamp * scale
    damps = [damp, 10 * max(damp, 1e-8 * scale)]
    for retries, d in enumerate(damps):
        L, err = torch.linalg.cholesky_ex(g + d * eye)
        if int(err) == 0 and bool(torch.isfinite(L).all()):
            return L, {"damp": d, "retries": retries, "method": "cholesky", "floored": 0,
                       "dead": dead}
    d = damps[-1]
    L, floored = _eigh_factor(g + d * eye, floor=max(d, 1e-12 * scale))
    return L, {"damp": d, "retries": len(damps), "method": "eigh", "floored": floored,
               "dead": dead}


def whitened_truncation(w: torch.Tensor, L: torch.Tensor, rank: int,
                        dtype: torch.dtype = torch.float32,
                        generator: torch.Generator | None = None,
                        method: SvdMethod = "full") -> tuple[torch.Tensor, torch.Tensor]:
    """SVD-LLM truncation: minimize ‖(W - BA) X‖ where XᵀX = L Lᵀ.

    ‖(W - BA)L‖_F is the output error, so the best rank-k BA is the truncated SVD of W·L
    mapped back: B = U√S, A = √S Vᵀ L⁻¹, with L⁻¹ applied by a triangular solve
    (an explicit inverse of an ill-conditioned L loses digits).
    """
    L64 = L.to(torch.float64)
    u, s, vh = _svd64(w.detach().to(torch.float64) @ L64, rank, generator, method)
    r = s.sqrt()
    B = u * r
    A = torch.linalg.solve_triangular(L64, r[:, None] * vh, upper=False, left=False)
    return A.to(dtype), B.to(dtype)


def positive_weights(v: torch.Tensor, rel_floor: float = 1e-6) -> tuple[torch.Tensor, int]:
    """Raise weights below rel_floor x mean to that floor, so a weighting can be undone.

    Returns float64 weights and how many were floored (zero statistics = dead channels).
    An all-zero vector becomes all ones (no information: no weighting).
    """
    v = v.detach().to(torch.float64).clone()
    if not bool(torch.isfinite(v).all()):
        raise ValueError("importance weights have NaN/Inf entries: the statistics overflowed; "
                        "collect them in float32.")
    mean = float(v.clamp_min(0).mean())
    floor = rel_floor * mean if mean > 0 else 1.0
    low = v < floor
    return torch.where(low, torch.full_like(v, floor), v), int(low.sum())


def weighted_truncation_rows_cols(w: torch.Tensor, row_weights: torch.Tensor | None = None,
                                  col_weights: torch.Tensor | None = None, *, rank: int,
                                  dtype: torch.dtype = torch.float32,
                                  generator: torch.Generator | None = None,
                                  method: SvdMethod = "full") -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-k BA for ‖I_r (W - BA) I_c‖_F with diagonal, positive I_r, I_c (ASVD, FWSVD).

    Truncated SVD of I_r W I_c = U S Vᵀ, then B = I_r⁻¹ U√S, A = √S Vᵀ I_c⁻¹; the
    diagonal solves are divisions. Weights must be positive (see ``positive_weights``).
    """
    m, n = w.shape
    wr = _diag_weights(row_weights, m, w.device, "row")
    wc = _diag_weights(col_weights, n, w.device, "column")
    scaled = w.detach().to(torch.float64)
    if wr is not None:
        scaled = wr[:, None] * scaled
    if wc is not None:
        scaled = scaled * wc[None, :]
    u, s, vh = _svd64(scaled, rank, generator, method)
    r = s.sqrt()
    B = u * r
    A = r[:, None] * vh
    if wr is not None:
        B = B / wr[:, None]
    if wc is not None:
        A = A / wc[None, :]
    return A.to(dtype), B.to(dtype)


def _diag_weights(v: torch.Tensor | None, size: int, device: torch.device,
                  what: str) -> torch.Tensor | None:
    if v is None:
        return None
    if v.shape != (size,):
        raise ValueError(f"{what} weights have shape {tuple(v.shape)}, expected ({size},)")
    v = v.detach().to(device=device, dtype=torch.float64)
    if not bool(((v > 0) & torch.isfinite(v)).all()):
        raise ValueError(f"{what} weights must be positive and finite to be undone; "
                         f"floor them with positive_weights() first")
    return v


# --- two-sided weighting (Fisher rows x calibration whitening) ------------------------------

def two_sided_truncation(w: torch.Tensor, row_weights: torch.Tensor | None, L: torch.Tensor | None,
                         rank: int, dtype: torch.dtype = torch.float32,
                         generator: torch.Generator | None = None,
                         method: SvdMethod = "full") -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-k BA for ‖D (W − BA) L‖_F, D = diag(row_weights) > 0, L invertible (lower
    triangular, e.g. ``whitening``'s factor): tr(D ΔW G ΔWᵀ D) with G = L Lᵀ.

    Truncated SVD of D·W·L = U S Vᵀ, then B = D⁻¹ U√S (a division), A = √S Vᵀ L⁻¹ (a
    triangular solve, never an explicit inverse). D = I is SVD-LLM's whitened truncation;
    L = I is FWSVD's row-weighted one. The factors are rebalanced (``balance_factors``).
    """
    m, n = w.shape
    wr = _diag_weights(row_weights, m, w.device, "row")
    x = w.detach().to(torch.float64)
    if wr is not None:
        x = wr[:, None] * x
    L64 = None if L is None else L.to(device=w.device, dtype=torch.float64)
    if L64 is not None:
        x = x @ L64
    u, s, vh = _svd64(x, rank, generator, method)
    r = s.sqrt()
    B = u * r
    A = r[:, None] * vh
    if wr is not None:
        B = B / wr[:, None]
    if L64 is not None:
        A = torch.linalg.solve_triangular(L64, A, upper=False, left=False)
    A, B = balance_factors(A, B)
    return A.to(dtype), B.to(dtype)


def balance_factors(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale each rank-one term b_k a_kᵀ so that ‖b_k‖ = ‖a_k‖ (BA unchanged).

    A weighted split (√S on both sides of a *weighted* SVD) leaves the weighting in the factors:
    whitening by activations of norm ~10³ puts A near 10⁻³ and B near 10³, which a 16-bit
    storage dtype rounds badly. Equal norms keep both factors on the weight's scale.
    """
    a64, b64 = A.to(torch.float64), B.to(torch.float64)
    na = torch.linalg.vector_norm(a64, dim=1)
    nb = torch.linalg.vector_norm(b64, dim=0)
    ok = (na > 0) & (nb > 0)
    f = torch.where(ok, (nb / torch.where(ok, na, torch.ones_like(na))).sqrt(), torch.ones_like(na))
    return (a64 * f[:, None]).to(A.dtype), (b64 / f[None, :]).to(B.dtype)


def weighted_singular_values(w: torch.Tensor, row_weights: torch.Tensor | None = None,
                             L: torch.Tensor | None = None) -> torch.Tensor:
    """Singular values (descending, float64) of D·W·L: the spectrum a two-sided weighted
    truncation cuts, which is what a rank allocation for it must read (not W's)."""
    m, _ = w.shape
    wr = _diag_weights(row_weights, m, w.device, "row")
    x = w.detach().to(torch.float64)
    if wr is not None:
        x = wr[:, None] * x
    if L is not None:
        x = x @ L.to(device=w.device, dtype=torch.float64)
    return torch.linalg.svdvals(x)


def lower_triangular_inverse(L: torch.Tensor, leaf: int = 256) -> torch.Tensor:
    """L^-1 of a lower-triangular L by 2x2 blocks, [[A, 0], [C, D]]^-1 =
    [[A^-1, 0], [-D^-1 C A^-1, D^-1]]: n³/3 multiply-adds in GEMMs, where a triangular solve
    against the identity spends n³ (it does not know the right-hand side is triangular)."""
    n = L.shape[0]
    if n <= leaf:
        return torch.linalg.solve_triangular(L, torch.eye(n, dtype=L.dtype, device=L.device),
                                             upper=False)
    h = n // 2
    Ai = lower_triangular_inverse(L[:h, :h], leaf)
    Di = lower_triangular_inverse(L[h:, h:], leaf)
    out = torch.zeros_like(L)
    out[:h, :h], out[h:, h:] = Ai, Di
    out[h:, :h] = -(Di @ (L[h:, :h] @ Ai))
    return out
