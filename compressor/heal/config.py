"""The heal stage's options: a recipe stage (``- {method: heal, steps: 200, loss: kl}``) that
trains the low-rank factors after the sequential pass. Each field carries its help text."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressor.core.method import MethodConfig


class HealConfig(MethodConfig):
    method: Literal["heal"] = "heal"
    steps: int = Field(200, ge=0, description=(
        "Optimizer steps, one calibration window each (batch 1). 0 trains nothing."))
    lr: float = Field(1e-4, gt=0.0, description=(
        "Peak AdamW learning rate of the low-rank factors (linear warmup, cosine decay to 0)."))
    loss: Literal["kl", "ce"] = Field("kl", description=(
        "'kl': KL divergence from the uncompressed model's next-token distribution (the "
        "teacher, cached as its top-k log-probabilities plus one tail bucket before the "
        "sequential pass); 'ce': plain next-token cross-entropy on the text."))
    nsamples: int = Field(128, ge=1, description=(
        "Training windows (cycled in a seeded order when steps > nsamples)."))
    seqlen: int | None = Field(None, ge=8, description=(
        "Tokens per training window (default: the calibration seqlen)."))
    windows: Literal["disjoint", "calibration"] = Field("disjoint", description=(
        "'disjoint': windows from the calibration split that share no token with the "
        "compression calibration windows (documents holding one are skipped); falls back to "
        "the calibration windows, and says so, when the text has too few. 'calibration': "
        "reuse the compression calibration windows. The evaluation split is never used."))
    top_k: int = Field(64, ge=1, description=(
        "Teacher log-probabilities kept per token for 'kl'; the rest of the vocabulary is one "
        "tail bucket (the loss is the KL over these k+1 outcomes, a lower bound of the full KL)."))
    warmup: int = Field(10, ge=0, description="Linear learning-rate warmup steps.")
    grad_clip: float = Field(1.0, gt=0.0, description="Clip the factors' gradient norm to this.")
    save_every: int = Field(50, ge=0, description=(
        "Checkpoint factors, optimizer and step every this many steps beside the per-layer "
        "resume folder, so --resume continues healing (0: never)."))
