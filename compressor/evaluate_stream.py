"""Perplexity of a streamed model (``compressor.load(stream=True)``), layer-major: every
window's hidden state goes through layer i before layer i+1 is read, so each layer is read
from disk once per evaluation instead of once per window.

The definition is ``evaluate.perplexity``'s, computed by it: the same windows and scored
tokens, with the final hidden states replayed as the last layer's output, so the model's own
final norm, head and loss give the logits. Holds every window's hidden state (n × seqlen ×
hidden in the compute dtype) besides one layer.
"""

from __future__ import annotations

import torch
from torch import nn

from compressor.checkpoint.stream_load import streamed_layers
from compressor.core.layer_io import capture_inputs, propagate, replaying
from compressor.evaluate import Progress, check_windows, perplexity


@torch.no_grad()
def streamed_perplexity(model: nn.Module, windows: torch.Tensor,
                        device: str | torch.device = "cpu", batch_size: int = 1,
                        progress: Progress | None = None) -> dict:
    """``perplexity`` of a streamed model; ``progress(done, total)`` counts layers.
    ``batch_size`` is accepted for the same signature: windows pass one at a time."""
    stream = streamed_layers(model)
    if stream is None:
        raise ValueError("streamed_perplexity needs a model from compressor.load(stream=True)")
    check_windows(windows, batch_size)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        hidden, layer_kwargs = capture_inputs(model, stream.layers, windows, device)
        n = len(stream.layers)
        for i in range(n):
            with stream.holding(i, device) as layer:
                propagate(layer, hidden, layer_kwargs[i], device)
            if progress is not None:
                progress(i + 1, n)
        with replaying(stream.layers, hidden):
            result = perplexity(model, windows, device, batch_size=1)
    finally:
        model.train(was_training)
    return {**result, "streamed": "layer-major"}
