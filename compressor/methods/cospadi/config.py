"""CoSpaDi's options: ratio, non-zeros per code, K-SVD iterations, OMP block, damping."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressor.core.method import MethodConfig


class CoSpaDiConfig(MethodConfig):
    method: Literal["cospadi"] = "cospadi"
    ratio: float = Field(0.2, gt=0.0, lt=1.0, description=(
        "Fraction of each target matrix's parameters removed (0.2 keeps 80%), counting the "
        "dictionary, the code values and the code supports (bit masks or indices, "
        "whichever is smaller, at their byte size)."))
    atoms_per_column: int | None = Field(None, ge=1, description=(
        "Non-zeros s per output channel's code. Default: k // 2 for the largest k that "
        "fits, the paper's k/s ≈ 2."))
    iters: int | None = Field(None, ge=0, description=(
        "Iterations (support update + dictionary update). Default: 16 for the fast solver "
        "(its early stop usually ends sooner on small matrices), 10 for 'ksvd'."))
    omp_block: int | None = Field(None, ge=1, description=(
        "Atoms OMP adds per step (1 = classic OMP, more = generalized OMP: fewer, cheaper "
        "steps). Default: ceil(s / 16), at most 16 steps per code."))
    solver: Literal["fast", "ksvd"] = Field("fast", description=(
        "'fast': batched dictionary learning (whitened-SVD warm start, MOD dictionary "
        "update, conjugate-gradient refits, thresholded support updates, early stop; every "
        "step a GEMM over all channels, never worse than its warm start). 'ksvd': the "
        "classic K-SVD (OMP + Gauss-Seidel atom sweep), about 10x slower."))
    coding: Literal["threshold", "omp"] = Field("threshold", description=(
        "fast solver's support update: 'threshold' (keep the s largest of coefficient / "
        "residual correlation) or 'omp' (fresh OMP codes, slower)."))
    tol: float = Field(1e-3, ge=0.0, description=(
        "fast solver: stop once an iteration lowers the relative error by less than this "
        "fraction of it."))
    cg_steps: int = Field(2, ge=0, description=(
        "fast solver: conjugate-gradient steps per coefficient refit."))
    precision: Literal["float32", "float64"] = Field("float32", description=(
        "fast solver's working precision for its GEMMs (the objective is always float64)."))
    percdamp: float = Field(0.01, ge=0.0, description=(
        "Damping added to the Gram diagonal, as a fraction of its mean, before Cholesky."))
