"""EoRA: low-rank compensation of a compression error in the eigenspace of the inputs.

A compressed layer applies Ŵ instead of W; the error it makes on real inputs x is ΔW x with
ΔW = W − Ŵ. What matters is the output error over the calibration tokens,

    Σ_x ‖(ΔW − BA) x‖² = tr(E G Eᵀ),   E = ΔW − BA,   G = Σ_x x xᵀ = QΛQᵀ,

so the best rank-r BA is the truncated SVD of ΔW in the metric G: with M = ΔW·QΛ^{1/2}
(tr(E G Eᵀ) = ‖E·QΛ^{1/2}‖²_F), take M ≈ U_r Σ_r V_rᵀ and map back with Λ^{-1/2}Qᵀ.
Eigenvalues below ``eig_floor · λ_max`` are raised to that floor (a dead channel or too few
tokens leaves G singular); the floor only matters in directions the inputs barely visit,
and it keeps Λ^{-1/2} finite. Plain truncated SVD of ΔW is the baseline (G = I).
"""

from __future__ import annotations

from typing import Any

import torch

import compressor.primitives.linalg as linalg
from compressor.primitives.linalg import check_rank


def gram_eigen(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Λ ascending, Q) of the symmetrized Gram in float64: linears fed the same input share
    it (q/k/v, gate/up), so the method computes it once per input."""
    if not torch.isfinite(gram).all():
        raise ValueError("EoRA got a non-finite gram or weight error; the calibration "
                         "statistics are corrupt (NaN/inf activations?)")
    g = gram.double()
    return torch.linalg.eigh(0.5 * (g + g.T))  # accumulated sums are symmetric only up to rounding


def top_singular(m: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_r, every singular value, descending) of a float64 ``m`` from the eigenpairs of its
    smaller Gram (m mᵀ or mᵀ m): the top ``rank`` pairs at a fraction of a full SVD's cost,
    accurate for the leading values, which are all EoRA keeps."""
    rows, cols = m.shape
    lam, vec = torch.linalg.eigh(m @ m.T if rows <= cols else m.T @ m)
    s = lam.flip(0).clamp_min(0).sqrt()
    top = vec.flip(1)[:, :rank]
    if rows <= cols:
        return top, s
    sr = s[:rank]
    u = (m @ top) / torch.where(sr > 0, sr, torch.ones_like(sr))
    return u * (sr > 0), s


def eora_factors(delta: torch.Tensor, gram: torch.Tensor, rank: int,
                 eig_floor: float = 1e-6,
                 eigen: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Rank-``rank`` factors (A: rank×in, B: out×rank, float32) with BA ≈ ΔW in the G metric.

    ``eigen``: ``gram_eigen(gram)``, when the caller already has it (shared input).
    info: eig_floor (absolute floor used), eig_floored (eigenvalues raised to it),
    lambda_max, whitened_residual (fraction of tr(ΔW G' ΔWᵀ) left after compensation, with
    G' the floored gram).
    """
    check_rank(*delta.shape, rank, "the compensated layer")
    n = delta.shape[1]
    if gram.shape != (n, n):
        raise ValueError(f"gram is {tuple(gram.shape)}, expected ({n}, {n})")
    if not torch.isfinite(delta).all():
        raise ValueError("EoRA got a non-finite gram or weight error; the calibration "
                         "statistics are corrupt (NaN/inf activations?)")
    lam, q = eigen if eigen is not None else gram_eigen(gram)
    lam_max = float(lam.max())
    if lam_max <= 0.0:
        # No input energy at all: every direction is equally (un)important, so the G metric
        # degenerates to the identity. Documented fallback: plain SVD.
        a, b, info = svd_compensation(delta, rank)
        info.update(eig_floor=0.0, eig_floored=n, lambda_max=lam_max, fallback="svd")
        return a, b, info
    floor = eig_floor * lam_max
    floored = int((lam < floor).sum())
    root = lam.clamp_min(floor).sqrt()
    m_w = (delta.double() @ q) * root                      # ΔW Q Λ^{1/2}
    u, s = top_singular(m_w, rank)
    s_r = s[:rank].sqrt()
    b = u * s_r                                            # U_r Σ_r^{1/2}
    # A = Σ_r^{1/2} V_rᵀ Λ^{-1/2} Qᵀ equals Σ_r^{-1/2} U_rᵀ ΔW exactly (V_rᵀ = Σ_r⁻¹ U_rᵀ ΔW Q Λ^{1/2}):
    # the same factors without dividing by (floored) eigenvalues. Zero singular values carry
    # nothing, so their rows of A are zero.
    inv = torch.where(s_r > 0, 1.0 / s_r.clamp_min(torch.finfo(s_r.dtype).tiny), torch.zeros_like(s_r))
    a = inv[:, None] * (u.T @ delta.double())
    total = float((m_w * m_w).sum())
    resid = max(total - float((s[:rank] * s[:rank]).sum()), 0.0) / total if total > 0 else 0.0
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise FloatingPointError("EoRA factors are not finite; raise eig_floor")
    info = {"eig_floor": floor, "eig_floored": floored, "lambda_max": lam_max,
            "whitened_residual": resid}
    return a.float(), b.float(), info


def svd_compensation(delta: torch.Tensor, rank: int
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Baseline: rank-``rank`` truncated SVD of ΔW itself (ignores the inputs)."""
    check_rank(*delta.shape, rank, "the compensated layer")
    u, s, vh = linalg.truncated_svd(delta, rank, method="full")
    a, b = linalg.lowrank_factors(u, s, vh, torch.float32)
    total = float(delta.double().pow(2).sum())
    resid = float((delta.double() - b.double() @ a.double()).pow(2).sum()) / total \
        if total > 0 else 0.0
    return a, b, {"frobenius_residual": resid}
