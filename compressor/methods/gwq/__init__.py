"""GWQ (Shao et al. 2024, "GWQ: Gradient-Aware Weight Quantization for LLMs")."""

from .config import GWQConfig
from .method import GWQ

__all__ = ["GWQConfig", "GWQ"]
