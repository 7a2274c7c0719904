"""GPTQ's options: RTN's grid plus damping, blocks, act-order and static groups."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressor.methods.rtn.config import RTNConfig


class GPTQConfig(RTNConfig):
    """RTN's grid options plus GPTQ's own."""

    method: Literal["gptq"] = "gptq"
    percdamp: float = Field(0.01, gt=0, description="Hessian damping as a fraction of its mean "
                                                    "diagonal (raised 10x on Cholesky failure)")
    blocksize: int = Field(128, ge=1, description="columns per lazy-update block (speed only)")
    act_order: bool = Field(False, description="quantize columns by descending Hessian diagonal "
                                               "(static groups keep groups contiguous)")
    static_groups: bool = Field(False, description=(
        "compute every group's grid once from the original weights (llm-compressor's way) "
        "instead of from the updated weights when the group starts (the paper's)"))
