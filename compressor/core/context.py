"""What every pass over the decoder layers shares: where it computes, how it is seeded, what it
writes in, the rank group (a one-process group when alone, never None), the resume checkpoints,
progress and the per-stage clock. One object instead of a dozen hand-passed arguments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from compressor.progress import NullProgress, ProgressSink

if TYPE_CHECKING:
    from compressor.core.distributed import Distributed
    from compressor.core.resume import LayerCheckpoints


@dataclass
class PassContext:
    device: torch.device
    seed: int
    storage_dtype: torch.dtype
    dist: "Distributed"
    resume: "LayerCheckpoints | None" = None      # the compress pass's checkpoints (rank 0)
    progress: ProgressSink = field(default_factory=NullProgress)
    times: dict[str, float] = field(default_factory=dict)

    def add_time(self, stage: str, seconds: float) -> None:
        self.times[stage] = self.times.get(stage, 0.0) + seconds
