"""What a compression method is: pure math from (weight, statistics, config) to parts.

Methods never touch hooks, devices, files or progress bars. The pipeline gives each one a
Target (one linear layer's original weight, its calibration statistics and a seeded
generator) plus whatever the earlier stage produced, and gets back a Compressed. A method's
config object is its API: validated once (in the recipe) and handed to compress().
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from compressor.core.types import Compressed, Target
from compressor.errors import MissingStatistic, UserError
from compressor.parts.base import CompressedLinear


class MethodConfig(BaseModel):
    """Base of every method's config: unknown keys are errors (a typo must not pass)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Method:
    """A registered compressor. Subclasses set the class attributes and ``compress``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""               # one line for `svdc methods`
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    needs: ClassVar[frozenset[str]] = frozenset()
    # True when compress() builds on the previous stage's output (EoRA compensation).
    uses_previous: ClassVar[bool] = False
    # True when compress() makes the whole result from the original weight and every other
    # compression stage would be wasted (the plan: its menu entries are the chains).
    sole_stage: ClassVar[bool] = False

    def plan(self, weights: dict[str, torch.Tensor], cfg: MethodConfig,
             fisher: dict[str, torch.Tensor] | None = None,
             dtype: torch.dtype = torch.float16,
             measures: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """Optional global pass over all target weights (rank / bit allocation).

        ``dtype`` is the storage dtype of the parts' floating tensors (budgets that count
        bytes need it). ``measures``: what ``plan_measure`` returned for each target, when
        ``plan_needs_for`` asked for calibration statistics (else None). Returns
        per-target-name dicts that reach ``compress`` as ``target.plan``.
        """
        return {}

    def plan_needs_for(self, cfg: MethodConfig) -> frozenset[str]:
        """Statistics the global plan reads (default: none, plan() sees weights only).

        When not empty, the pipeline runs a planning pass before the sequential one: the
        uncompressed model, layer by layer, on the calibration windows, calling
        ``plan_measure`` for every target with these statistics (one layer's statistics in
        memory at a time), and hands the results to ``plan`` as ``measures``.
        """
        return frozenset()

    def plan_measure(self, target: Target, cfg: MethodConfig) -> Any:
        """Reduce one target's weight and statistics (of the *uncompressed* model's inputs) to
        what ``plan`` needs, e.g. an error per candidate configuration or a spectrum."""
        return None

    def compress(self, target: Target, cfg: MethodConfig,
                 previous: CompressedLinear | None = None) -> Compressed:
        raise NotImplementedError

    def run(self, target: Target, cfg: MethodConfig,
            previous: CompressedLinear | None = None) -> Compressed:
        """compress() with the math layer's plain ValueErrors (a rank that does not fit, a
        budget that cannot be met) turned into one-line user errors naming the module."""
        with _user_errors(f"{self.name} on {target.name}"):
            return self.compress(target, cfg, previous)

    def run_plan(self, weights: Mapping[str, torch.Tensor], cfg: MethodConfig,
                 fisher: dict[str, torch.Tensor] | None = None,
                 dtype: torch.dtype = torch.float16,
                 measures: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """plan() with plain ValueErrors turned into user errors, as run() does."""
        with _user_errors(self.name):
            if measures is None:
                return self.plan(weights, cfg, fisher, dtype)
            return self.plan(weights, cfg, fisher, dtype, measures=measures)

    def run_plan_measure(self, target: Target, cfg: MethodConfig) -> Any:
        """plan_measure() with plain ValueErrors turned into user errors naming the module."""
        with _user_errors(f"{self.name} (plan) on {target.name}"):
            return self.plan_measure(target, cfg)

    def needs_for(self, cfg: MethodConfig) -> frozenset[str]:
        """The statistics this configuration reads (default: the class's ``needs``)."""
        return self.needs

    def calibration_advice(self, cfg: MethodConfig, tokens: int, widest_input: int) -> str | None:
        """A one-line warning when ``tokens`` calibration tokens are too few for this
        configuration's fit to generalize to other text (None: nothing to say)."""
        return None

    def true_sequential(self, cfg: MethodConfig) -> bool:
        """True when this configuration wants each group of a layer's linears (q/k/v, o,
        gate/up, down) calibrated on the outputs of the groups compressed before it."""
        return False


def require_stat(target: Target, stat: str) -> torch.Tensor:
    """The named statistic of the target, or MissingStatistic naming it and the fix."""
    value = getattr(target.stats, stat)
    if value is None:
        raise MissingStatistic(f"{target.name}: statistic {stat!r} was not collected; give the "
                               f"stage calibration data (or gradients) that provide it")
    return value


def fisher_output_row_weights(target: Target, gram: torch.Tensor) -> torch.Tensor:
    """The loss weights D of error: fisher-output (core.measures.loss_row_weights) from the
    target's Fisher row sums, or MissingStatistic naming the backward pass they need."""
    rows = target.stats.fisher_rows
    if rows is None:
        raise MissingStatistic(f"{target.name}: error 'fisher-output' needs the Fisher row "
                               f"sums (a backward pass); they were not collected")
    from compressor.core.measures import loss_row_weights
    return loss_row_weights(rows, gram, target.stats.ntokens)


@contextmanager
def _user_errors(where: str) -> Iterator[None]:
    """The math layer's plain ValueErrors (a rank that does not fit, a budget that cannot be
    met) as one-line user errors prefixed with ``where``; user errors pass through."""
    try:
        yield
    except UserError:
        raise
    except ValueError as e:
        raise UserError(f"{where}: {e}") from e


class SharedInputCache:
    """One value derived from a Gram (a factorization, an eigendecomposition), reused while
    linears fed the same input (q/k/v, gate/up) are compressed one after the other: the
    stats collector hands them the same Gram tensor. Keyed weakly by identity plus the
    tensor's version counter, and holding one entry only, so the value goes with the Gram's
    last user instead of staying resident while the next layer is read."""

    def __init__(self) -> None:
        from torch.utils.weak import WeakIdKeyDictionary
        self._entries = WeakIdKeyDictionary()

    def get(self, gram: torch.Tensor, key: Any, compute: Any) -> Any:
        key = (key, gram._version)
        hit = self._entries.get(gram)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = compute()
        self._entries.clear()
        self._entries[gram] = (key, value)
        return value
