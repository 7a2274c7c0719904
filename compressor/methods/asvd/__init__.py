"""ASVD (Yuan et al. 2023): activation-aware SVD."""

from .config import ASVDConfig
from .method import ASVD

__all__ = ["ASVDConfig", "ASVD"]
