"""Pruning options: sparsity, pattern and score."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressor.core.method import MethodConfig


class PruneConfig(MethodConfig):
    method: Literal["prune"] = "prune"
    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="fraction of weights removed, per "
                                                              "row (ignored for N:M patterns)")
    pattern: Literal["unstructured", "2:4", "4:8"] = Field(
        "unstructured", description="unstructured, or keep N of every M consecutive inputs")
    score: Literal["magnitude", "wanda"] = Field(
        "magnitude", description="rank weights by |W|, or by Wanda's |W|·‖x‖ (needs calibration)")
