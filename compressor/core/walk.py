"""The one walk over decoder layers that every pass uses (planning statistics, the gradient
forward, the heal teacher, the compress pass).

For each layer i: the source reads it (a no-op in memory), it visits the compute device, the
visitor does its work on it (collect statistics, compress it in place), its outputs become
layer i+1's inputs, and the source releases it. Because the visitor may replace the layer's
linears before the outputs are computed, the compress pass feeds layer i+1 with the
compressed layer i's outputs; a planning pass, which replaces nothing, with the dense ones.
Without windows (a data-free run) nothing is captured or propagated.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol

import torch
from torch import nn

from compressor.core.context import PassContext
from compressor.core.layer_io import capture_inputs, move_all_but_layers, propagate


class LayerSource(Protocol):
    def load(self, i: int, layer: nn.Module) -> None: ...

    def release(self, i: int, layer: nn.Module) -> None: ...


# visit(i, layer, hidden, layer_kwargs, say): hidden is None in a data-free walk
Visitor = Callable[[int, nn.Module, "list[torch.Tensor] | None", "dict[str, Any] | None",
                    Callable[[str], None]], None]


def walk_layers(model: nn.Module, layers_path: str, layers: nn.ModuleList,
                windows: torch.Tensor | None, ctx: PassContext, source: LayerSource,
                visit: Visitor, name: str = "layers") -> list[torch.Tensor] | None:
    """Run ``visit`` on every decoder layer in order (module docstring); returns the last
    layer's outputs per window (on the CPU), or None without windows."""
    device, progress = ctx.device, ctx.progress
    was_training = model.training
    model.eval()
    move_all_but_layers(model, layers_path, device)
    hidden, layer_kwargs = None, [None] * len(layers)
    if windows is not None:
        t = time.perf_counter()
        hidden, layer_kwargs = capture_inputs(model, layers, windows, device)
        ctx.add_time("capture", time.perf_counter() - t)
    n = len(layers)
    progress.start(name, n, "layer")
    try:
        for i, layer in enumerate(layers):
            note = f"layer {i + 1}/{n}"
            source.load(i, layer)
            layer.to(device)
            visit(i, layer, hidden, layer_kwargs[i],
                  lambda what, note=note: progress.advance(name, 0, f"{note} {what}"))
            if hidden is not None:
                progress.advance(name, 0, f"{note} propagate")
                t = time.perf_counter()
                propagate(layer, hidden, layer_kwargs[i], device)
                ctx.add_time("propagate", time.perf_counter() - t)
            source.release(i, layer)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            progress.advance(name, 1, note)
    finally:
        progress.finish(name)
        move_all_but_layers(model, layers_path, "cpu")
        model.train(was_training)
    return hidden
