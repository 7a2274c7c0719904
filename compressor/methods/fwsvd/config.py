"""FWSVD's options: the low-rank fields plus which Fisher sums weight the error."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compressor.methods.lowrank_family import LowRankConfig


class FWSVDConfig(LowRankConfig):
    method: Literal["fwsvd"] = "fwsvd"
    axis: Literal["rows", "cols", "both"] = Field("rows", description=(
        "Which Fisher sums weight the reconstruction: 'rows' (per output channel, as in "
        "the paper: I·W), 'cols' (per input channel: W·I) or 'both' (I_r·W·I_c)."))
    whiten: bool = Field(False, description=(
        "Two-sided: Fisher row weights on the output side and the calibration whitening on "
        "the input side, i.e. the truncated SVD of D_F^½·W·L (XᵀX = L Lᵀ) undone with a "
        "division and a triangular solve; minimizes tr(D_F ΔW G ΔWᵀ), a Kronecker-factored "
        "estimate of the loss increase. Uses the row sums only (axis 'rows')."))
    percdamp: float = Field(0.01, ge=0.0, description=(
        "Damping of the Gram diagonal (fraction of its mean) when whiten is true."))

    @model_validator(mode="after")
    def _check(self) -> "FWSVDConfig":
        if self.whiten and self.axis != "rows":
            raise ValueError("whiten: true weights the input side by the calibration whitening; "
                             "it takes the Fisher row sums only (axis: rows)")
        return self
