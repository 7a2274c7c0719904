"""The matrix kept as it is, in the storage dtype: the plan menu's most expensive entry."""

from .config import DenseConfig
from .method import Dense

__all__ = ["DenseConfig", "Dense"]
