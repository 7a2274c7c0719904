"""The registered ``heal`` post stage: it trains the low-rank factors of the whole compressed
model after the sequential pass (``compressor.heal.stage`` is what the run's phases call)."""

from __future__ import annotations

from compressor.core.post_stage import PostStage
from compressor.core.registry import register_post_stage

from .config import HealConfig


@register_post_stage
class Heal(PostStage):
    name = "heal"
    summary = ("Post-compression training of the low-rank factors only (lowrank parts of SVD "
               "methods, EoRA / LQ-LoRA paths, WeLore's LRCs) against the uncompressed model "
               "(KL) or the text (CE); everything else frozen, budget unchanged.")
    Config = HealConfig
