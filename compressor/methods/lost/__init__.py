"""LOST adapted to post-training: low-rank part plus whole-channel sparse part."""

from .config import LOSTConfig
from .method import LOST

__all__ = ["LOSTConfig", "LOST"]
