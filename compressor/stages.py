"""A stage is one method with its validated config; a recipe is a list of stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .methods import Method, MethodConfig, get_method
from .methods.base import STAT_NAMES


@dataclass
class Stage:
    method: Method
    cfg: MethodConfig
    plan: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.method.name

    def needs(self) -> frozenset[str]:
        needs_for = getattr(self.method, "needs_for", None)
        needs = frozenset(needs_for(self.cfg)) if needs_for else frozenset(self.method.needs)
        unknown = needs - STAT_NAMES
        if unknown:
            raise ValueError(f"method {self.name} declares unknown statistics {sorted(unknown)}")
        return needs


def build_stage(method_name: str, params: dict[str, Any]) -> Stage:
    """Validate ``params`` against the method's config (unknown keys are errors)."""
    cls = get_method(method_name)
    return Stage(method=cls(), cfg=cls.Config(**params))


def stage_needs(stages: list[Stage]) -> frozenset[str]:
    out: frozenset[str] = frozenset()
    for s in stages:
        out |= s.needs()
    return out
