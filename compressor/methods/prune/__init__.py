"""Magnitude / Wanda pruning, unstructured (per row) or N:M, stored as a sparse part."""

from .config import PruneConfig
from .method import Prune

__all__ = ["PruneConfig", "Prune"]
