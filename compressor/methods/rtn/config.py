"""RTN's options; GPTQ and the grid-based stages share them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from compressor.core.method import MethodConfig


class RTNConfig(MethodConfig):
    method: Literal["rtn"] = "rtn"
    bits: int = Field(4, ge=2, le=8, description="bits per weight code (2..8)")
    group_size: int = Field(128, description="input columns sharing one scale/zero; "
                                             "-1 = one group per row; a ragged last group is fine")
    sym: bool = Field(False, description="symmetric grid (no stored zero points) instead of "
                                         "asymmetric min/max")

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, v: int) -> int:
        return check_group_size(v)


def check_group_size(v: int) -> int:
    """-1 (one group per row) or a positive size: 0 or -5 are typos, not per-row."""
    if v != -1 and v < 1:
        raise ValueError("group_size must be -1 (one group per row) or >= 1")
    return v
