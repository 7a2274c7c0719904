"""Round-to-nearest group-wise uniform quantization: the data-free quantization baseline."""

from .config import RTNConfig
from .method import RTN

__all__ = ["RTNConfig", "RTN"]
