"""Gradient statistics (Fisher, |grad|) with one decoder layer resident at a time, for models
larger than memory (``--stream``).

Forward: the layer walk (core/walk.py) over the dense model, keeping every layer's input per
window (the layer-boundary activations: (layers + 1) × windows × seqlen × hidden in the
compute dtype), in memory when they take under a quarter of the available memory, else as
safetensors files in the run's resume folder (the report's ``gradients.boundaries`` says
where and how much). Head: each window's final hidden state is replayed through the model's
own final norm and head into Hugging Face's loss, giving ∂loss/∂h. Backward: from the last
layer to the first, the layer is read, each window's input re-run through it with autograd,
and the output gradient pushed through: its target weights' per-window gradients feed the same
accumulators as the in-memory pass (core/gradients.py) and the input gradient becomes the
next layer's output gradient. The result equals the whole-model backward up to fp32 summation
order (tested).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from compressor.core.context import PassContext
from compressor.core.gradients import (
    FP16_LOSS_SCALE,
    GRAD_STATS,
    _check_counts,
    _check_windows,
    _finalize,
    _install_hooks,
    _peak_rss_bytes,
)
from compressor.core.layer_io import move_all_but_layers, replaying
from compressor.core.walk import LayerSource, walk_layers


class _Boundaries:
    """Each layer's input per window (in memory, or one safetensors file per layer) and the
    keyword arguments its forward took (masks, rotary tables: small, kept in memory)."""

    def __init__(self, folder: Path | None):
        self.folder, self.mem, self.bytes = folder, {}, 0
        self.kwargs: dict[int, Any] = {}
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)

    def put(self, i: int, hidden: list[torch.Tensor], kwargs: Any) -> None:
        self.kwargs[i] = kwargs
        self.bytes += sum(h.numel() * h.element_size() for h in hidden)
        if self.folder is None:
            self.mem[i] = list(hidden)
        else:
            save_file({f"w{j}": h.contiguous() for j, h in enumerate(hidden)},
                      str(self.folder / f"boundary-{i:05d}.safetensors"))

    def get(self, i: int) -> list[torch.Tensor]:
        if self.folder is None:
            return self.mem.pop(i)
        path = self.folder / f"boundary-{i:05d}.safetensors"
        t = load_file(str(path))
        path.unlink()
        return [t[f"w{j}"] for j in range(len(t))]

    def close(self) -> None:
        self.mem.clear()
        self.kwargs.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _available_bytes() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def streamed_gradient_stats(model: nn.Module, layers_path: str, layers: nn.ModuleList,
                            windows: torch.Tensor, target_names: list[str], want: set[str],
                            ctx: PassContext, source: LayerSource, scratch: Path
                            ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """``gradient_stats``'s result without the whole model resident (module docstring);
    ``scratch``: where boundary activations go when they do not fit in memory."""
    unknown = set(want) - GRAD_STATS
    if unknown:
        raise ValueError(f"unknown gradient statistics {sorted(unknown)}")
    windows = _check_windows(windows)
    device, n = ctx.device, windows.shape[0]
    t0, rss0 = time.perf_counter(), _peak_rss_bytes()
    dtype = next(model.parameters()).dtype
    hidden_size = model.config.get_text_config().hidden_size
    need = (len(layers) + 1) * windows.numel() * hidden_size * dtype.itemsize
    on_disk = need > _available_bytes() // 4
    store = _Boundaries(scratch / f"gradients-rank{ctx.dist.rank}" if on_disk else None)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)

        def keep(i, layer, hidden, kw, say):
            store.put(i, hidden, kw)

        final = walk_layers(model, layers_path, layers, windows, ctx, source, keep,
                            name="gradients forward")
        half = dtype == torch.float16
        scale = FP16_LOSS_SCALE if half else 1.0
        head = _head_gradients(model, layers_path, layers, windows, final, device, scale)
        del final
        stats = _backward(layers_path, layers, target_names, want, ctx, source, store, head)
    finally:
        store.close()
        for p, flag in flags:
            p.requires_grad_(flag)
    peak = _peak_rss_bytes()
    info = {"nsamples": n, "seqlen": int(windows.shape[1]),
            "seconds": round(time.perf_counter() - t0, 3), "streamed": True,
            "device": str(device), "gradient_checkpointing": "per layer (streamed)",
            "boundaries": {"where": str(store.folder) if on_disk else "memory",
                           "bytes": store.bytes},
            "peak_rss_bytes": peak, "peak_rss_delta_bytes": max(0, peak - rss0),
            "memory_measure": "process peak RSS (getrusage ru_maxrss)"}
    return stats, info


@dataclass
class _HeadGradients:
    """∂(scale · loss of window j)/∂(final hidden state j) per window (CPU), the loss scale,
    and whether any window's loss was not finite."""
    grads: list[torch.Tensor]
    scale: float
    nonfinite: bool


def _head_gradients(model, layers_path, layers, windows, final, device, scale) -> _HeadGradients:
    """The head's output gradients, the model's layers replayed by their final outputs."""
    grads, bad = [], False
    move_all_but_layers(model, layers_path, device)
    try:
        for j in range(windows.shape[0]):
            h = final[j].to(device).detach().requires_grad_(True)
            with replaying(layers, [h]), torch.enable_grad():
                ids = windows[j:j + 1].to(device)
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                bad |= not bool(torch.isfinite(loss.detach()))
                (loss * scale).backward()
            grads.append(h.grad.detach().to("cpu"))
    finally:
        move_all_but_layers(model, layers_path, "cpu")
    return _HeadGradients(grads, scale, bad)


def _backward(layers_path: str, layers: nn.ModuleList, target_names: list[str], want: set[str],
              ctx: PassContext, source: LayerSource, store: _Boundaries,
              head: _HeadGradients) -> dict[str, dict[str, torch.Tensor]]:
    """Last layer to first: per-window weight gradients into the accumulators; the input
    gradient becomes the layer below's output gradient."""
    device, out = ctx.device, {}
    grads, scale = head.grads, head.scale
    n = len(grads)
    ctx.progress.start("gradients backward", len(layers), "layer")
    for i in reversed(range(len(layers))):
        layer = layers[i]
        source.load(i, layer)
        layer.to(device)
        prefix = f"{layers_path}.{i}."
        names = [t for t in target_names if t.startswith(prefix)]
        params = {t: layer.get_submodule(t[len(prefix):]).weight for t in names}
        by_param: dict[int, tuple[nn.Parameter, list[str]]] = {}
        for t, p in params.items():
            by_param.setdefault(id(p), (p, []))[1].append(t)
        inputs = store.get(i)
        with contextlib.ExitStack() as stack:
            for p, _ in by_param.values():
                p.requires_grad_(True)
                stack.callback(p.requires_grad_, False)
            buffers, counts = _install_hooks(stack, by_param.values(), want, scale)
            with torch.enable_grad():
                for j in range(n):
                    x = inputs[j].to(device).requires_grad_(True)
                    y = layer(x, **store.kwargs[i])
                    y = y[0] if isinstance(y, (tuple, list)) else y
                    y.backward(grads[j].to(device=device, dtype=y.dtype))
                    grads[j] = x.grad.detach().to("cpu")
            _check_counts(counts, by_param, n)
            out.update(_finalize(buffers, by_param, want, n, head.nonfinite))
        del inputs
        source.release(i, layer)
        ctx.progress.advance("gradients backward", 1, f"layer {i + 1}/{len(layers)}")
    ctx.progress.finish("gradients backward")
    return out
