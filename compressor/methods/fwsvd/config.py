"""FWSVD's options: the low-rank fields plus which Fisher sums weight the error."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressor.methods.lowrank_family import LowRankConfig


class FWSVDConfig(LowRankConfig):
    method: Literal["fwsvd"] = "fwsvd"
    axis: Literal["rows", "cols", "both"] = Field("rows", description=(
        "Which Fisher sums weight the reconstruction: 'rows' (per output channel, as in "
        "the paper: I·W), 'cols' (per input channel: W·I) or 'both' (I_r·W·I_c)."))
