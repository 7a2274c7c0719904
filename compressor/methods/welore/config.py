"""WeLore's options: one global ratio; allocation is always welore."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressor.core.method import MethodConfig


class WeLoreConfig(MethodConfig):
    method: Literal["welore"] = "welore"
    ratio: float = Field(0.2, gt=0.0, lt=1.0, description=(
        "Fraction of all target parameters removed, as one global budget (0.2 keeps 80%)."))
    allocation: Literal["welore"] = Field("welore", description=(
        "Always 'welore' here; use allocation: welore on svd/fwsvd/... to combine."))
    svd_method: Literal["full", "randomized"] = Field("full", description=(
        "'full' SVD (exact) or 'randomized' (seeded range finder; faster for small ranks)."))
