"""FWSVD (Hsu et al. 2022): Fisher-weighted low-rank factorization."""

from .config import FWSVDConfig
from .method import FWSVD

__all__ = ["FWSVDConfig", "FWSVD"]
