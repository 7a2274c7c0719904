"""LQ-LoRA's options: bits budget, rank, mixed allocation and its candidates."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compressor.core.method import MethodConfig
from compressor.methods.lqlora.budget import DEFAULT_BLOCK_SIZES, DEFAULT_NF_BITS


class LQLoRAConfig(MethodConfig):
    method: Literal["lqlora"] = "lqlora"
    bits: float = Field(2.75, gt=0.0, description=(
        "Target average bits per weight over all targets, counting NF codes, block scales "
        "and the 16-bit low-rank factors. With mixed=false: the NF code width (2, 3, 4, 8)."))
    rank: int = Field(64, ge=0, description="Rank of the low-rank part L = BA (0: NF only).")
    mixed: bool = Field(True, description=(
        "Choose NF bits and block size per matrix by an integer linear program under the "
        "`bits` budget; false: one fixed NF{bits} configuration with `block_size`."))
    max_iters: int = Field(20, ge=0, description=(
        "Most alternations of L = SVD_r(W - Q), Q = quantize(W - L); stops early when the "
        "error rises."))
    plan_iters: int = Field(3, ge=0, description=(
        "Alternations per candidate configuration while planning (the sweep runs every "
        "configuration on every matrix, so it is kept short)."))
    fisher_weighted: bool = Field(False, description=(
        "Weight rows and columns of the error by sqrt of the mean Fisher information "
        "(needs a backward pass over the calibration data)."))
    nf_bits: list[int] = Field(list(DEFAULT_NF_BITS), min_length=1, description=(
        "Candidate NF code widths for the mixed allocation."))
    block_sizes: list[int] = Field(list(DEFAULT_BLOCK_SIZES), min_length=1,
                                   description="Candidate NF block sizes for the mixed allocation.")
    block_size: int = Field(64, ge=1, description="NF block size when mixed=false.")
    svd_method: Literal["full", "randomized"] = Field("full", description=(
        "SVD inside the final decomposition: 'full' or 'randomized' (seeded)."))
    plan_svd_method: Literal["full", "randomized"] = Field("randomized", description=(
        "SVD inside the planning sweep (randomized is much cheaper for small ranks)."))

    @model_validator(mode="after")
    def _check(self) -> "LQLoRAConfig":
        for b in ([] if self.mixed else [self.bits]) + list(self.nf_bits):
            if b != int(b) or not 2 <= int(b) <= 8:
                raise ValueError(f"NF bits {b} unsupported: use an integer from 2 to 8 "
                                 f"(with mixed=false, `bits` is the NF code width)")
        if any(bs < 1 for bs in self.block_sizes):
            raise ValueError("block sizes must be positive")
        return self
