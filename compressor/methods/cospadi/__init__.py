"""CoSpaDi: calibration-guided sparse dictionary learning (README, Methods)."""

from .config import CoSpaDiConfig
from .method import CoSpaDi

__all__ = ["CoSpaDiConfig", "CoSpaDi"]
