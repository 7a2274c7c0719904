"""LOST's options: ratio, the budget split between rank and channels, and the objective."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compressor.core.method import MethodConfig


class LOSTConfig(MethodConfig):
    method: Literal["lost"] = "lost"
    ratio: float = Field(0.2, gt=0.0, lt=1.0, description=(
        "Fraction of each target matrix's parameters removed (0.2 keeps 80%), counting the "
        "low-rank factors, the kept channels and their indices."))
    sparse_frac: float | None = Field(None, ge=0.0, lt=1.0, description=(
        "Fraction of the kept parameter budget spent on whole input channels; the rest goes "
        "to the low-rank part (rank 1 at least). None (default): each matrix tries every "
        "value in `sparse_fracs` and keeps the split with the least error on its objective."))
    sparse_fracs: list[float] = Field([0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99], min_length=1,
                                      description=(
        "Candidate channel shares searched per matrix when sparse_frac is None. The whole "
        "range: the error is not monotone in the share (on SmolLM2 it rises from rank-only, "
        "then falls below it near the channel end for most v/o/up/down matrices)."))
    whiten: bool = Field(False, description=(
        "Activation-aware: minimize the output error on the calibration inputs (low rank "
        "and channels in the whitened space, channels scored by residual x activation "
        "norm, their columns fitted by least squares). Needs several times more calibration "
        "tokens than input channels (the fit overfits a few thousand). False: the weight "
        "error, scaled per input channel when act_scale is true."))
    act_scale: bool = Field(True, description=(
        "When whiten is false: fit on W·diag(s), s_j the RMS of input channel j over the "
        "calibration inputs, and undo it (the output error under a diagonal Gram). With "
        "`--calib random` those inputs are seeded random token ids, so no text is used (the "
        "data-free variant). False: the plain weight error, which on SmolLM2 drops input "
        "channels whose small weight columns carry large inputs."))
    percdamp: float = Field(0.01, ge=0.0, description=(
        "Damping of the Gram diagonal (fraction of its mean) when whiten is true."))
    iters: int = Field(1, ge=0, description=(
        "Alternations of the low-rank refit and the channel fit after the first split."))
    rank: int | None = Field(None, ge=1, description=(
        "Explicit rank; overrides `ratio`. The channels then get sparse_frac of the total "
        "r(m+n)/(1-sparse_frac) (needs a fixed sparse_frac)."))

    @model_validator(mode="after")
    def _check(self) -> "LOSTConfig":
        if any(not 0.0 <= f < 1.0 for f in self.sparse_fracs):
            raise ValueError("sparse_fracs must lie in [0, 1)")
        if self.rank is not None and self.sparse_frac is None:
            raise ValueError("an explicit rank needs a fixed sparse_frac (the split search "
                             "trades rank for channels under the ratio's budget)")
        return self
