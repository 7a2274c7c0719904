"""The registered ``heal`` stage. It is a *post* stage: it does not compress one linear but
trains the low-rank factors of the whole compressed model after the sequential pass, so the
pipeline never hands it a Target (see ``compressor.heal.stage`` for where it runs)."""

from __future__ import annotations

from compressor.core.method import Method, MethodConfig
from compressor.core.registry import register
from compressor.core.types import Compressed, Target
from compressor.parts.base import CompressedLinear

from .config import HealConfig


@register
class Heal(Method):
    name = "heal"
    summary = ("Post-compression training of the low-rank factors only (lowrank parts of SVD "
               "methods, EoRA / LQ-LoRA paths, WeLore's LRCs) against the uncompressed model "
               "(KL) or the text (CE); everything else frozen, budget unchanged.")
    Config = HealConfig
    post_stage = True

    def compress(self, target: Target, cfg: MethodConfig,
                 previous: CompressedLinear | None = None) -> Compressed:
        raise TypeError("heal is a post stage: it runs after the sequential pass, on the whole "
                        "model (compressor.heal.stage), not per linear")
