"""WeLore (Jaiswal et al. 2024): data-free, non-uniform ranks from singular-value tails.

plan() reads every target's singular spectrum and picks ranks under one global budget
(see primitives.allocation.welore_ranks); compress() truncates the low-rank components
(LRCs) and leaves the others (N-LRCs) dense.
"""

from __future__ import annotations

from compressor.core.registry import register
from compressor.methods.svd.method import SVD

from .config import WeLoreConfig


@register
class WeLore(SVD):
    name = "welore"
    summary = ("WeLore: global rank allocation from singular-value heavy tails; "
               "low-rank matrices truncated, the rest kept dense. The paper then fine-tunes "
               "the low-rank components: --heal-steps N does it (heal stage).")
    Config = WeLoreConfig
