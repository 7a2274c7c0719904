"""GWQ's options: grid, outlier fraction and score, inner quantizer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from compressor.core.method import MethodConfig
from compressor.methods.rtn.config import check_group_size


class GWQConfig(MethodConfig):
    method: Literal["gwq"] = "gwq"
    bits: int = Field(3, ge=2, le=8, description="Bits per quantized (non-outlier) weight, 2..8.")
    group_size: int = Field(128, description=(
        "Input columns per quantization group (scale and zero each); -1 means one group "
        "per row."))
    sym: bool = Field(False, description="Symmetric grid (fixed zero point) instead of min/max.")
    outlier_frac: float = Field(0.01, ge=0.0, lt=1.0, description=(
        "Fraction of each matrix's weights kept in 16 bit as sparse outliers (paper: 0.01). "
        "0 gives the plain inner quantizer."))
    outlier_score: Literal["gradient", "magnitude"] = Field("gradient", description=(
        "How outliers are chosen: 'gradient' = largest mean |dL/dW| (GWQ), 'magnitude' = "
        "largest |W| (the baseline GWQ is compared against)."))
    inner: Literal["rtn", "gptq"] = Field("rtn", description=(
        "Quantizer for the non-outlier weights: round-to-nearest, or GPTQ (needs the "
        "layer's input Gram matrix)."))
    percdamp: float = Field(0.01, gt=0.0, description=(
        "GPTQ damping, as a fraction of the mean Hessian diagonal (inner='gptq' only)."))

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, v: int) -> int:
        return check_group_size(v)
