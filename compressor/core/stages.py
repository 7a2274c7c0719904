"""A stage at run time: a method instance with its validated config and its global plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from compressor.core.method import Method, MethodConfig
from compressor.core.registry import get_method
from compressor.core.types import STAT_NAMES


@dataclass
class Stage:
    method: Method
    cfg: MethodConfig
    plan: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, cfg: MethodConfig) -> "Stage":
        """The stage for a validated config (its ``method`` tag names the class)."""
        return cls(method=get_method(cfg.method)(), cfg=cfg)

    @property
    def name(self) -> str:
        return self.method.name

    def needs(self) -> frozenset[str]:
        needs = frozenset(self.method.needs_for(self.cfg))
        unknown = needs - STAT_NAMES
        if unknown:
            raise ValueError(f"method {self.name} declares unknown statistics {sorted(unknown)}")
        return needs


def stage_needs(stages: list[Stage]) -> frozenset[str]:
    out: frozenset[str] = frozenset()
    for s in stages:
        out |= s.needs()
    return out
