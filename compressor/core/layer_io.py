"""Feeding decoder layers one at a time: capture layer-0 inputs and every layer's kwargs, and
replay the last layer's outputs through the model's head.

The model's own forward builds the attention masks and rotary embeddings each layer gets
(Gemma 3 gives sliding-window layers a different mask than global ones), so we run it once
with every decoder layer swapped for a catcher that records its arguments and stops the
forward at the last layer. Only the embeddings run; no layer weights need be on the device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

_DROP_KWARGS = {"past_key_value", "past_key_values", "use_cache", "output_attentions"}


class _StopForward(Exception):
    pass


class _StandIn(nn.Module):
    """Takes a decoder layer's place in the model's forward; attributes the model reads from
    its layers (e.g. ``attention_type``) come from the layer, which is never run."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self._wrapped = [layer]  # a list, so the layer is not registered as a child

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._wrapped[0], name)


class _Catcher(_StandIn):
    """Records (hidden, kwargs), passes hidden through."""

    def __init__(self, layer: nn.Module, index: int, last: int, sink: dict):
        super().__init__(layer)
        self.index, self.last, self.sink = index, last, sink

    def forward(self, hidden_states, *args, **kwargs):
        if self.index == 0:
            self.sink["hidden"] = hidden_states.detach()
        if "kwargs" in self.sink:
            kw = {k: v for k, v in kwargs.items() if k not in _DROP_KWARGS}
            self.sink["kwargs"].append(kw)
        if self.index == self.last:
            raise _StopForward
        return hidden_states


def to_device(obj: Any, device: torch.device | str) -> Any:
    """Move tensors nested in tuples/lists/dicts to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(to_device(o, device) for o in obj)
    if isinstance(obj, list):
        return [to_device(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


@torch.no_grad()
def capture_inputs(model: nn.Module, layers: nn.ModuleList, windows: torch.Tensor,
                   device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Layer-0 inputs (one CPU tensor per window) and the kwargs every layer receives.

    The kwargs are recorded once (all windows share the same length, so masks and
    positions are identical) and kept on ``device``.
    """
    originals = list(layers)
    n = len(originals)
    sink: dict[str, Any] = {"kwargs": []}
    inputs: list[torch.Tensor] = []
    try:
        for i in range(n):
            layers[i] = _Catcher(originals[i], i, n - 1, sink)
        for w in range(windows.shape[0]):
            try:
                model(windows[w:w + 1].to(device), use_cache=False)
            except _StopForward:
                pass
            inputs.append(sink["hidden"].to("cpu"))
            if w == 0:
                layer_kwargs = sink.pop("kwargs")
    finally:
        for i in range(n):
            layers[i] = originals[i]
    return inputs, [to_device(kw, device) for kw in layer_kwargs]


class _Replay(_StandIn):
    """Passes hidden through, or (the last layer) returns the next stored output instead."""

    def __init__(self, layer: nn.Module, outputs: Iterator[torch.Tensor] | None):
        super().__init__(layer)
        self.outputs = outputs

    def forward(self, hidden_states, *args, **kwargs):
        if self.outputs is None:
            return hidden_states
        return next(self.outputs).to(hidden_states.device)


@contextmanager
def replaying(layers: nn.ModuleList, outputs: list[torch.Tensor]) -> Iterator[None]:
    """Within the block, each forward of the model yields the next of ``outputs`` (one per
    call, in order) as the last decoder layer's output, without running any layer: the
    model's own final norm, head and logit transforms then compute its logits from hidden
    states computed elsewhere (layer-major evaluation)."""
    originals = list(layers)
    feed = iter(outputs)
    try:
        for i, layer in enumerate(originals):
            layers[i] = _Replay(layer, feed if i == len(originals) - 1 else None)
        yield
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer


@torch.no_grad()
def run_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def propagate(layer: nn.Module, hidden: list[torch.Tensor], kwargs: dict[str, Any],
              device: torch.device | str) -> None:
    """Replace each window's hidden state (kept on the CPU) by the layer's output, in place:
    one window's output beside the list, not a second list of every window's. Packed
    weights are decoded once for all windows (``materialized``), not once per window."""
    from compressor.parts.base import materialized
    with materialized(layer):
        for j, x in enumerate(hidden):
            hidden[j] = run_layer(layer, x.to(device), kwargs).to("cpu")


def move_all_but_layers(model: nn.Module, layers_path: str, device: torch.device | str) -> None:
    """Put embeddings, norms, head and rotary tables on ``device`` (or cast them: anything
    ``Module.to`` takes); leave the layers where they are."""
    parent_path, _, attr = layers_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    layers = getattr(parent, attr)
    setattr(parent, attr, nn.ModuleList())
    try:
        model.to(device)
    finally:
        setattr(parent, attr, layers)


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` of ``root`` by ``module``."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)
