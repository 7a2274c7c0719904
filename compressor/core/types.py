"""The data that flows between the pipeline and the methods: statistics, targets, results.

This module imports no method, so the statistics collector and the pipeline can use it
without loading every compressor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from compressor.parts.base import CompressedLinear

# Statistic names a method may declare in ``needs``.
STAT_NAMES = frozenset({"gram", "act_absmean", "fisher", "fisher_rows", "fisher_cols",
                        "grad_absmean"})


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
    seed: int = 0                   # the run's seed (a stage running other stages seeds them)


@dataclass
class Compressed:
    module: CompressedLinear
    info: dict[str, Any] = field(default_factory=dict)  # report fields: rank, bits, damping...


@dataclass
class ModuleRecord:
    """One row of the report: what happened to one linear layer."""

    name: str
    layer: int
    kind: str
    shape: tuple[int, int]
    methods: list[str]
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    weight_rel_err: float
    output_rel_err: float | None
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d
