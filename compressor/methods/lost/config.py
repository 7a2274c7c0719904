"""LOST's options: ratio, the sparse channels' budget share, or an explicit rank."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressor.core.method import MethodConfig


class LOSTConfig(MethodConfig):
    method: Literal["lost"] = "lost"
    ratio: float = Field(0.2, ge=0.0, lt=1.0, description=(
        "Fraction of each target matrix's parameters removed (0.2 keeps 80%), counting the "
        "low-rank factors, the kept channels and their indices."))
    sparse_frac: float = Field(0.1, ge=0.0, lt=1.0, description=(
        "Fraction of the kept parameter budget spent on whole input channels of the SVD "
        "residual; the rest goes to the low-rank part."))
    rank: int | None = Field(None, ge=1, description=(
        "Explicit rank; overrides `ratio`. The channels then get sparse_frac of the total "
        "r(m+n)/(1-sparse_frac)."))
