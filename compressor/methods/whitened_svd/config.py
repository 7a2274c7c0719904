"""Whitened SVD's options: the low-rank fields plus the Gram damping."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressor.methods.lowrank_family import LowRankConfig


class WhitenedSVDConfig(LowRankConfig):
    method: Literal["whitened-svd"] = "whitened-svd"
    percdamp: float = Field(0.01, ge=0.0, description=(
        "Damping added to the Gram diagonal, as a fraction of its mean (dead channels and "
        "few tokens make XᵀX singular)."))
