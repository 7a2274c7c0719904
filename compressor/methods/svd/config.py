"""Plain SVD's options: exactly the low-rank fields."""

from __future__ import annotations

from typing import Literal

from compressor.methods.lowrank_family import LowRankConfig


class SVDConfig(LowRankConfig):
    method: Literal["svd"] = "svd"
