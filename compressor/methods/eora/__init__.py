"""EoRA stage: add a low-rank path that compensates the previous stage's error."""

from .config import EoraConfig
from .method import EoRA

__all__ = ["EoraConfig", "EoRA"]
