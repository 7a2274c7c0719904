"""What a compression method is: pure math from (weight, statistics, config) to parts.

Methods never touch hooks, devices, files or progress bars. The pipeline gives each one a
``Target`` (one linear layer's original weight, its calibration statistics and a seeded
generator) plus whatever the earlier stage produced, and gets back a ``Compressed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from ..modules.base import CompressedLinear

# Statistic names a method may declare in ``needs``.
STAT_NAMES = frozenset({"gram", "act_absmean", "fisher", "fisher_rows", "fisher_cols",
                        "grad_absmean"})


class MethodConfig(BaseModel):
    """Base of every method's config: unknown keys are errors (a typo must not pass)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass
class LinearStats:
    """Calibration statistics of one linear layer's input (and gradients), float32."""

    ntokens: int = 0
    gram: torch.Tensor | None = None          # (in, in)  sum over tokens of x xᵀ
    act_absmean: torch.Tensor | None = None   # (in,)     mean over tokens of |x|
    fisher: torch.Tensor | None = None        # (out, in) sum over samples of (dL/dW)²
    fisher_rows: torch.Tensor | None = None   # (out,)    its row sums, without the (out, in)
    fisher_cols: torch.Tensor | None = None   # (in,)     its column sums  buffer
    grad_absmean: torch.Tensor | None = None  # (out, in) mean over samples of |dL/dW|


@dataclass
class Target:
    """One linear layer to compress, as the pipeline hands it to a method."""

    name: str                       # e.g. "model.layers.3.self_attn.q_proj"
    layer_index: int
    kind: str                       # e.g. "q_proj"
    weight: torch.Tensor            # original weight (out, in), float32, on the compute device
    bias: torch.Tensor | None
    stats: LinearStats
    generator: torch.Generator      # seeded from (seed, name): randomized routines use it
    dtype: torch.dtype              # storage dtype for floating tensors of the parts
    plan: dict[str, Any] = field(default_factory=dict)  # from the method's global pass


@dataclass
class Compressed:
    module: CompressedLinear
    info: dict[str, Any] = field(default_factory=dict)  # report fields: rank, bits, damping...


class Method:
    """A registered compressor. Subclasses set the class attributes and ``compress``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""               # one line for `svdc methods`
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    needs: ClassVar[frozenset[str]] = frozenset()
    # True when compress() builds on the previous stage's output (EoRA compensation).
    uses_previous: ClassVar[bool] = False

    def plan(self, weights: dict[str, torch.Tensor], cfg: MethodConfig,
             fisher: dict[str, torch.Tensor] | None = None,
             dtype: torch.dtype = torch.float16) -> dict[str, dict[str, Any]]:
        """Optional global pass over all target weights (rank / bit allocation).

        ``dtype`` is the storage dtype of the parts' floating tensors (budgets that count
        bytes need it). Returns per-target-name dicts that reach ``compress`` as ``target.plan``.
        """
        return {}

    def compress(self, target: Target, cfg: MethodConfig,
                 previous: CompressedLinear | None = None) -> Compressed:
        raise NotImplementedError
