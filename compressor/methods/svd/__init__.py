"""Plain truncated SVD: the baseline every low-rank method is judged against."""

from .config import SVDConfig
from .method import SVD

__all__ = ["SVDConfig", "SVD"]
