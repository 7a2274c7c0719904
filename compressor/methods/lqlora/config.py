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
    plan_iters: int = Field(1, ge=0, description=(
        "Alternations per candidate configuration while planning. 1 (default): one step of "
        "the paper's sequence with the first low-rank fit shared by all candidates (an upper "
        "bound of the final error, ~4x cheaper); more: full alternations per candidate."))
    error: Literal["fisher-output", "output", "fisher", "weight"] = Field("fisher-output", description=(
        "What the decomposition and the ILP minimize. 'fisher-output' (default): the output "
        "error on the calibration inputs weighted by each output channel's mean squared loss "
        "gradient (its Fisher row sum, one backward pass, divided by the mean input energy "
        "tr(G)/T, which the row sum already holds once), tr(D ΔW G ΔWᵀ), a second-order estimate "
        "of the loss increase, so the ILP compares matrices of different layers in one unit. "
        "'output': the unweighted tr(ΔW G ΔWᵀ) (no backward pass; its scale grows with depth, "
        "so the ILP gives the first layers the fewest bits: on SmolLM2 that broke the model). "
        "Both: the rank step is a whitened truncation and the plan gathers Grams in one "
        "forward pass of the uncompressed model. "
        "'fisher': the paper's Fisher-weighted ‖diag(√F_rows) ΔW diag(√F_cols)‖² (needs a "
        "backward pass). 'weight': the data-free ‖ΔW‖²."))
    rounding: Literal["gptq", "nearest"] = Field("gptq", description=(
        "How the NF codes are chosen for given block scales. 'gptq' (default with the "
        "output-error objectives): column by column with GPTQ's error feedback through the "
        "inverse Hessian of the layer's inputs, the Q step then minimizing the same output "
        "error as the rank step (same storage, lower error; an addition to the paper). "
        "'nearest': the paper's round-to-nearest level (the only choice for error: fisher "
        "or weight, which have no Gram)."))
    fisher_weighted: bool = Field(False, description=(
        "Same as error: fisher (kept for older recipes)."))
    factor_dtype: Literal["float16", "bfloat16", "storage"] = Field("float16", description=(
        "Dtype the low-rank factors are stored in, and priced at by the budget: 16 bit by "
        "default even when the model is float32 (the paper's setting); 'storage' follows "
        "the checkpoint's storage dtype."))
    percdamp: float = Field(0.01, ge=0.0, description=(
        "Damping of the Gram diagonal (fraction of its mean) for error: output."))
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
        if self.fisher_weighted and self.error != "fisher":
            if "error" in self.model_fields_set:
                raise ValueError(f"fisher_weighted: true contradicts error: {self.error}; "
                                 f"use error: fisher")
            object.__setattr__(self, "error", "fisher")
        if self.error in ("fisher", "weight") and self.rounding == "gptq":
            if "rounding" in self.model_fields_set:
                raise ValueError(f"rounding: gptq needs the calibration Gram (error: output or "
                                 f"fisher-output), not error: {self.error}; use rounding: nearest")
            object.__setattr__(self, "rounding", "nearest")
        for b in ([] if self.mixed else [self.bits]) + list(self.nf_bits):
            if b != int(b) or not 2 <= int(b) <= 8:
                raise ValueError(f"NF bits {b} unsupported: use an integer from 2 to 8 "
                                 f"(with mixed=false, `bits` is the NF code width)")
        if any(bs < 1 for bs in self.block_sizes):
            raise ValueError("block sizes must be positive")
        return self
