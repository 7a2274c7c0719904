"""Where a pass gets decoder layer i's weights, and what it does with them after: the only
thing ``--stream`` changes in a run besides the writer.

``InMemoryLayers``: the whole model is resident; a layer visits the compute device and goes
back to the CPU. ``StreamedLayers``: the model is a meta-device skeleton (embeddings, final
norm and head real); layer i is read from the safetensors shards just before it is used and
returned to the meta device after (its compressed form is in the resume checkpoints by then).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from compressor.core.shards import ShardReader, free_module, load_module


class InMemoryLayers:
    def __init__(self, model: nn.Module, layers_path: str):
        self.model, self.layers_path = model, layers_path

    def load(self, i: int, layer: nn.Module) -> None:
        """Layer i's weights are already there."""

    def release(self, i: int, layer: nn.Module) -> None:
        layer.to("cpu")

    def weights(self, names: list[str], device: torch.device) -> Mapping[str, torch.Tensor]:
        return DeviceWeights({n: self.model.get_submodule(n).weight for n in names}, device)


class StreamedLayers:
    def __init__(self, model: nn.Module, layers_path: str, reader: ShardReader):
        self.model, self.layers_path, self.reader = model, layers_path, reader

    def load(self, i: int, layer: nn.Module) -> None:
        load_module(self.model, self.reader, f"{self.layers_path}.{i}.", layer, "cpu")

    def release(self, i: int, layer: nn.Module) -> None:
        free_module(layer)

    def weights(self, names: list[str], device: torch.device) -> Mapping[str, torch.Tensor]:
        return ShardWeights(self.reader, names, device)


class DeviceWeights(Mapping):
    """Target weights for a global plan() pass, each handed out as float32 on the compute
    device when asked for (one at a time, so a 7B model never sits on the GPU twice)."""

    def __init__(self, weights: dict[str, torch.Tensor], device: torch.device):
        self._w, self._device = weights, device

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._w[name].detach().to(device=self._device, dtype=torch.float32)

    def __iter__(self):
        return iter(self._w)

    def __len__(self) -> int:
        return len(self._w)


class ShardWeights(Mapping):
    """Target weights for a global plan() pass, read one at a time from the shards."""

    def __init__(self, reader: ShardReader, names: list[str], device: torch.device):
        self.reader, self.names, self.device = reader, names, device

    def __getitem__(self, name: str) -> torch.Tensor:
        key = name + ".weight"
        return self.reader.read([key])[key].to(device=self.device, dtype=torch.float32)

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)
