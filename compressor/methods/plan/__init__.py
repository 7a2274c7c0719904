"""A size budget, not a method: one menu candidate per matrix, chosen by an ILP so the
written bits per weight meet the budget at the lowest Fisher-weighted output error."""

from .config import PlanConfig
from .method import Plan

__all__ = ["PlanConfig", "Plan"]
