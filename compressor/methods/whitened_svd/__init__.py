"""Whitened SVD (SVD-LLM style): truncate where the output error, not the weight error, is least."""

from .config import WhitenedSVDConfig
from .method import WhitenedSVD

__all__ = ["WhitenedSVDConfig", "WhitenedSVD"]
