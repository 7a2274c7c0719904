"""Which tensors heal trains, and how they become trainable and go back.

Parts store their tensors as buffers (what goes to disk). While training, each low-rank
factor (``LowRankPart.A`` / ``.B``) is swapped for an fp32 ``nn.Parameter`` holding the same
values; afterwards it is a buffer again in its own storage dtype, under the same name, so the
checkpoint layout, the byte count and the PEFT export are unchanged. Every other tensor (model
parameters: embeddings, norms, biases; parts: quantized codes, scales, dictionaries, sparse
values, dense or channel parts) stays frozen.

``qlowrank`` parts (EoRA's ``--lowrank-bits``) are left frozen: their factors are integer
codes on a grid, and training them would need a straight-through estimator and a
re-quantization that rounds most of a small update away; heal reports how many it skipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from compressor.parts.base import CompressedLinear
from compressor.parts.lowrank import LowRankPart

FACTORS = ("A", "B")


@dataclass
class TrainableFactors:
    """The factors being trained, by checkpoint key (``<module>.parts.<i>.<A|B>``)."""

    params: dict[str, nn.Parameter]
    skipped_qlowrank: list[str]

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params.values())


def lowrank_parts(model: nn.Module) -> tuple[dict[str, LowRankPart], list[str]]:
    """Trainable low-rank parts by name, and the names of quantized low-rank parts skipped."""
    parts: dict[str, LowRankPart] = {}
    skipped: list[str] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, CompressedLinear):
            continue
        for i, p in enumerate(mod.parts):
            if isinstance(p, LowRankPart):
                parts[f"{name}.parts.{i}"] = p
            elif p.type_name == "qlowrank":
                skipped.append(f"{name}.parts.{i}")
    return parts, skipped


@contextlib.contextmanager
def trainable_factors(model: nn.Module) -> Iterator[TrainableFactors]:
    """Freeze the model, make every LowRankPart's A and B fp32 Parameters; restore on exit
    (factors cast back to their stored dtype, every requires_grad flag as it was)."""
    parts, skipped = lowrank_parts(model)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    swapped: list[tuple[LowRankPart, str, torch.dtype]] = []
    params: dict[str, nn.Parameter] = {}
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for pname, part in parts.items():
            for key in FACTORS:
                buf = part._buffers.pop(key)
                swapped.append((part, key, buf.dtype))
                param = nn.Parameter(buf.detach().to(torch.float32).clone(), requires_grad=True)
                part.register_parameter(key, param)
                params[f"{pname}.{key}"] = param
        yield TrainableFactors(params, skipped)
    finally:
        with torch.no_grad():
            for part, key, dtype in swapped:
                param = part._parameters.pop(key)
                part.register_buffer(key, param.detach().to(dtype).contiguous())
        for p, flag in flags:
            p.requires_grad_(flag)
