"""LQ-LoRA stage: W ≈ NF-quantized Q + rank-r BA, with bits / block sizes chosen per matrix."""

from .config import LQLoRAConfig
from .method import LQLoRA

__all__ = ["LQLoRAConfig", "LQLoRA"]
