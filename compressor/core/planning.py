"""The planning pass: calibration statistics of the uncompressed model for the global plans
that need data (LQ-LoRA's output-error ILP, WeLore on whitened spectra), one layer at a time."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn

from compressor.core.layer_io import capture_inputs, move_all_but_layers, propagate
from compressor.core.pipeline import calibrate_layer, module_generator, with_gradients
from compressor.core.stages import Stage
from compressor.core.types import Target
from compressor.progress import NullProgress, ProgressSink


def planning_pass(
    model: nn.Module,
    layers_path: str,
    layers: nn.ModuleList,
    targets_of: Callable[[nn.Module], dict[str, nn.Module]],
    kind_of: Callable[[str], str],
    windows: torch.Tensor,
    stages: list[Stage],
    device: torch.device,
    seed: int,
    grad_stats: dict[str, dict[str, torch.Tensor]] | None = None,
    storage_dtype: torch.dtype | None = None,
    progress: ProgressSink | None = None,
) -> tuple[dict[int, dict[str, Any]], float]:
    """Calibration statistics of the *uncompressed* model for the stages whose global plan
    needs data (``Method.plan_needs_for``): returns ({stage index: {target: measure}}, seconds).

    One forward pass, layer by layer like the sequential pass, but nothing is replaced: each
    layer's targets get their statistics collected, every asking stage reduces them with
    ``plan_measure`` (an error table, a spectrum), and the statistics are dropped before the
    next layer, so memory holds one layer's Gram matrices at a time. Cost: one forward pass
    of the model over the calibration windows plus the stages' own measures.
    """
    asking = {k: st for k, st in enumerate(stages) if st.method.plan_needs_for(st.cfg)}
    if not asking:
        return {}, 0.0
    t0 = time.perf_counter()
    progress = progress or NullProgress()
    needs: frozenset[str] = frozenset()
    for st in asking.values():
        needs |= st.method.plan_needs_for(st.cfg)
    model_was_training = model.training
    model.eval()
    move_all_but_layers(model, layers_path, device)
    hidden, layer_kwargs = capture_inputs(model, layers, windows, device)
    out: dict[int, dict[str, Any]] = {k: {} for k in asking}
    n_layers = len(layers)
    progress.start("plan", n_layers, "layer")
    for i, layer in enumerate(layers):
        layer.to(device)
        kw = layer_kwargs[i]
        targets = targets_of(layer)
        layer_stats = calibrate_layer(layer, targets, hidden, kw, device, "act_absmean" in needs)
        for rel, linear in targets.items():
            full = f"{layers_path}.{i}.{rel}"
            stats = with_gradients(layer_stats[rel], (grad_stats or {}).get(full), device)
            w = linear.weight.detach().to(device=device, dtype=torch.float32)
            bias = None if linear.bias is None else linear.bias.detach().to(device)
            for k, st in asking.items():
                target = Target(name=full, layer_index=i, kind=kind_of(rel), weight=w, bias=bias,
                                stats=stats,
                                generator=module_generator(seed, f"plan:{st.name}:{full}", device),
                                dtype=storage_dtype or linear.weight.dtype)
                out[k][full] = st.method.run_plan_measure(target, st.cfg)
        del layer_stats
        propagate(layer, hidden, kw, device)
        layer.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        progress.advance("plan", 1, f"layer {i + 1}/{n_layers}")
    progress.finish("plan")
    model.to("cpu")
    model.train(model_was_training)
    return out, time.perf_counter() - t0
