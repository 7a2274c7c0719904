"""CoSpaDi's options: ratio, non-zeros per code, K-SVD iterations, OMP block, damping."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressor.core.method import MethodConfig


class CoSpaDiConfig(MethodConfig):
    method: Literal["cospadi"] = "cospadi"
    ratio: float = Field(0.2, ge=0.0, lt=1.0, description=(
        "Fraction of each target matrix's parameters removed (0.2 keeps 80%), counting the "
        "dictionary, the code values and the code supports (bit masks or indices, "
        "whichever is smaller, at their byte size)."))
    atoms_per_column: int | None = Field(None, ge=1, description=(
        "Non-zeros s per output channel's code. Default: k // 2 for the largest k that "
        "fits, the paper's k/s ≈ 2."))
    iters: int = Field(10, ge=0, description="K-SVD iterations (sparse coding + atom update).")
    omp_block: int | None = Field(None, ge=1, description=(
        "Atoms OMP adds per step (1 = classic OMP, more = generalized OMP: fewer, cheaper "
        "steps). Default: ceil(s / 16), at most 16 steps per code."))
    percdamp: float = Field(0.01, ge=0.0, description=(
        "Damping added to the Gram diagonal, as a fraction of its mean, before Cholesky."))
