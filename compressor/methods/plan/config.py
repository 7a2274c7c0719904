"""The plan's options: the budget, the menu and the error it minimizes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from compressor.core.method import MethodConfig

from .menu import DEFAULT_MENU, entry_name, parse_entry


class PlanConfig(MethodConfig):
    method: Literal["plan"] = "plan"
    bits: float = Field(gt=0.0, description=(
        "Budget: the written bits per weight over all target matrices, at most (codes, "
        "scales, outliers, factors: every byte a candidate stores)."))
    menu: list[Any] = Field(default_factory=lambda: [list(e) for e in DEFAULT_MENU],
                            min_length=1, description=(
        "What each matrix may become: a list of entries, each a stage "
        "({method: gptq, bits: 4, group_size: 64}) or a chain of stages "
        "([{method: gptq, bits: 3}, {method: eora, rank: 32}]). Default: GPTQ 2/3/4/8 bit "
        "and RTN 3/4/8 bit at g32/64/128, GPTQ 3/4 bit + EoRA rank 8/32, GWQ, LQ-LoRA NF3/NF4, whitened SVD with "
        "8-bit factors, dense."))
    error: Literal["fisher-output", "output"] = Field("fisher-output", description=(
        "What the ILP sums over matrices: 'fisher-output' (default) tr(D ΔW G ΔWᵀ), the "
        "output error on the calibration Gram weighted by each output channel's mean squared "
        "loss gradient (the Fisher row sums over the mean input energy; one backward pass): "
        "a second-order estimate of the loss increase, comparable across layers; "
        "'output': the unweighted tr(ΔW G ΔWᵀ) (no backward pass, but its scale grows with "
        "depth)."))
    measures_file: str | None = Field(None, description=(
        "Keep the priced menu (every candidate's error and bits on every matrix) in this "
        "JSON file: a later run with the same model, calibration and menu reads it and skips "
        "the planning pass, so trying another budget costs only the ILP and the sequential "
        "pass. A file made for other inputs is re-measured and replaced."))
    _stages: list[list[MethodConfig]] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _menu(self) -> "PlanConfig":
        self._stages = [parse_entry(e, f"menu entry {i + 1}") for i, e in enumerate(self.menu)]
        names = [entry_name(s) for s in self._stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"menu entry {dup[0]} appears twice; list each candidate once")
        return self

    @property
    def candidates(self) -> list[list[MethodConfig]]:
        """The validated menu: one list of stage configs per entry, in menu order."""
        return self._stages

    def names(self) -> list[str]:
        return [entry_name(s) for s in self._stages]
