"""The planning pass: calibration statistics of the uncompressed model for the global plans
that need data (LQ-LoRA's output-error ILP, WeLore on whitened spectra), on the one layer walk
(core/walk.py), so it runs the same in memory, streamed and with ranks."""

from __future__ import annotations

import time
from typing import Any

import torch

from compressor.core.context import PassContext
from compressor.core.pipeline import CompressJob, calibrate_groups, module_generator, with_gradients
from compressor.core.types import Target
from compressor.core.walk import LayerSource, walk_layers


def planning_pass(model, layers, windows: torch.Tensor, job: CompressJob, ctx: PassContext,
                  source: LayerSource, skip: frozenset[int] = frozenset()
                  ) -> tuple[dict[int, dict[str, Any]], float]:
    """Calibration statistics of the *uncompressed* model for the stages whose global plan
    needs data (``Method.plan_needs_for``): returns ({stage index: {target: measure}}, seconds).

    Nothing is replaced: each layer's targets get their statistics collected (summed over
    ranks), every asking stage reduces them with ``plan_measure`` (an error table, a
    spectrum), and the statistics are dropped before the next layer, so memory holds one
    layer's Gram matrices at a time. Cost: one forward pass of the model over the
    calibration windows plus the stages' own measures. ``skip``: stages whose measures were
    read from their measures file (core/plan_cache.py).
    """
    asking = {k: st for k, st in enumerate(job.stages)
              if k not in skip and st.method.plan_needs_for(st.cfg)}
    if not asking:
        return {}, 0.0
    t0 = time.perf_counter()
    needs: frozenset[str] = frozenset()
    for st in asking.values():
        needs |= st.method.plan_needs_for(st.cfg)
    out: dict[int, dict[str, Any]] = {k: {} for k in asking}

    def visit(i, layer, hidden, kw, say):
        targets = job.targets_of(layer)
        say("plan statistics")
        layer_stats, _ = calibrate_groups(layer, targets, hidden, kw, ctx,
                                          "act_absmean" in needs, what=f"layer {i} (plan)")
        for rel, linear in targets.items():
            full = f"{job.layers_path}.{i}.{rel}"
            stats = with_gradients(layer_stats[rel], (job.grad_stats or {}).get(full), ctx.device)
            w = linear.weight.detach().to(device=ctx.device, dtype=torch.float32)
            bias = None if linear.bias is None else linear.bias.detach().to(ctx.device)
            for k, st in asking.items():
                target = Target(name=full, layer_index=i, kind=job.kind_of(rel), weight=w,
                                bias=bias, stats=stats,
                                generator=module_generator(ctx.seed, f"plan:{st.name}:{full}",
                                                           ctx.device),
                                dtype=ctx.storage_dtype or linear.weight.dtype, seed=ctx.seed)
                out[k][full] = st.method.run_plan_measure(target, st.cfg)

    walk_layers(model, job.layers_path, layers, windows, ctx, source, visit, name="plan")
    return out, time.perf_counter() - t0
