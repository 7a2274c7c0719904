"""WeLore (Jaiswal et al. 2024): data-free, non-uniform ranks from singular-value tails.

plan() reads every target's singular spectrum and picks ranks under one global budget
(see allocation.welore_ranks); compress() truncates the low-rank components (LRCs) and
leaves the others (N-LRCs) dense.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from . import register
from .base import MethodConfig
from .svd import SVD


class WeLoreConfig(MethodConfig):
    ratio: float = Field(0.2, ge=0.0, lt=1.0, description=(
        "Fraction of all target parameters removed, as one global budget (0.2 keeps 80%)."))
    allocation: Literal["welore"] = Field("welore", description=(
        "Always 'welore' here; use allocation: welore on svd/fwsvd/... to combine."))
    svd_method: Literal["full", "randomized"] = Field("full", description=(
        "'full' SVD (exact) or 'randomized' (seeded range finder; faster for small ranks)."))


@register
class WeLore(SVD):
    name = "welore"
    summary = ("WeLore: global rank allocation from singular-value heavy tails; "
               "low-rank matrices truncated, the rest kept dense.")
    Config = WeLoreConfig
