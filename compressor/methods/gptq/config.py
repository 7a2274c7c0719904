"""GPTQ's options: RTN's grid plus damping, blocks, act-order, static groups and the
MSE range search; the defaults are the best combination measured (BENCHMARKS.md, GPTQ)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressor.methods.rtn.config import RTNConfig


class GPTQConfig(RTNConfig):
    """RTN's grid options plus GPTQ's own."""

    method: Literal["gptq"] = "gptq"
    percdamp: float = Field(0.01, gt=0, description="Hessian damping as a fraction of its mean "
                                                    "diagonal (raised 10x on Cholesky failure)")
    max_retries: int = Field(4, ge=0, description="damping retries (x10 each) before giving up")
    blocksize: int = Field(128, ge=1, description="columns per lazy-update block (speed only)")
    # Defaults: the best combination measured (BENCHMARKS.md, GPTQ), chosen on calibration-side
    # measures only: act-order (with its static groups) plus a Hessian-weighted range search.
    act_order: bool = Field(True, description="quantize columns by descending Hessian diagonal "
                                              "(implies static groups, kept contiguous)")
    static_groups: bool = Field(False, description=(
        "compute every group's grid once from the original weights (llm-compressor's way) "
        "instead of from the updated weights when the group starts (the paper's)"))
    grid: Literal["exact", "block-lazy"] = Field("exact", description=(
        "dynamic groups only: 'exact' = grid from the weights as updated so far; 'block-lazy' "
        "= from the lazily-updated W the reference code reads (no in-block updates)"))
    mse_grid: int = Field(50, ge=0, description=(
        "0: min/max grid; n > 0: search n shrink factors of each group's range, keep the "
        "lowest-error grid"))
    mse_maxshrink: float = Field(0.2, gt=0, lt=1, description=(
        "largest range shrink searched: factors 1, 1-1/mse_grid, ... down to 1-mse_maxshrink "
        "(default: 1, 0.98, ..., 0.82)"))
    mse_norm: float = Field(2.0, gt=0, description=(
        "error exponent of the grid search; 2 with mse_weighted is the diagonal of the output "
        "error (2.4, IST-DASLab's, measured the same on the layer objective at 2x the cost)"))
    mse_weighted: bool = Field(True, description=(
        "weight each column's error in the grid search by its input energy (Gram diagonal)"))
    true_sequential: bool = Field(False, description=(
        "within a layer, calibrate each group of linears (q/k/v, o, gate/up, down) on the "
        "outputs of the groups already quantized (GPTQModel's default); costs up to one "
        "partial layer forward per group"))
