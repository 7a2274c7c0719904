"""EoRA's options: rank, compensation kind, eigenvalue floor, factor quantization."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressor.core.method import MethodConfig


class EoraConfig(MethodConfig):
    method: Literal["eora"] = "eora"
    rank: int = Field(64, ge=1, description=(
        "Rank of the compensation path B·A (typical 32-128); costs rank·(in+out) values."))
    compensation: Literal["eora", "svd"] = Field("eora", description=(
        "'eora': SVD of the error in the eigenspace of the calibration inputs (minimizes "
        "the output error); 'svd': plain truncated SVD of the weight error (baseline)."))
    eig_floor: float = Field(1e-6, gt=0.0, lt=1.0, description=(
        "Eigenvalues of the input Gram below eig_floor x the largest are raised to it "
        "(dead channels / few tokens); the count is reported."))
    lowrank_bits: int | None = Field(None, ge=2, le=8, description=(
        "Store the factors A and B as group-wise quantized codes of this many bits "
        "(None keeps them in the model dtype)."))
    lowrank_group_size: int = Field(64, ge=1, description=(
        "Group size for quantizing the factors (groups run along each factor's input axis)."))
