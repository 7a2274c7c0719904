"""WeLore (Jaiswal et al. 2024): data-free, non-uniform ranks from singular-value tails."""

from .config import WeLoreConfig
from .method import WeLore

__all__ = ["WeLoreConfig", "WeLore"]
