"""ASVD's options: the low-rank fields plus the activation exponent."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressor.methods.lowrank_family import LowRankConfig


class ASVDConfig(LowRankConfig):
    method: Literal["asvd"] = "asvd"
    alpha: float = Field(0.5, ge=0.0, description=(
        "Exponent of the activation scaling S = mean|x|^alpha (0 = plain SVD; the ASVD "
        "paper uses 0.5)."))
