"""The uncompressed model's logits without holding it: every window walked through each decoder
layer in turn (one layer resident), then the final hidden states replayed through the model's
own final norm and head. Heal's teacher cache uses it in a streamed run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from compressor.core.context import PassContext
from compressor.core.layer_io import move_all_but_layers, replaying
from compressor.core.walk import LayerSource, walk_layers


@contextmanager
def replayed_forward(model: nn.Module, layers_path: str, layers: nn.ModuleList,
                     windows: torch.Tensor, ctx: PassContext, source: LayerSource
                     ) -> Iterator[None]:
    """Within the block, ``model(windows[i:i+1])`` for i = 0, 1, ... in order returns the
    dense model's outputs for those windows (the layers themselves never run)."""
    final = walk_layers(model, layers_path, layers, windows, ctx, source,
                        lambda *a: None, name="dense forward")
    move_all_but_layers(model, layers_path, ctx.device)
    try:
        with replaying(layers, final):
            yield
    finally:
        move_all_but_layers(model, layers_path, "cpu")
