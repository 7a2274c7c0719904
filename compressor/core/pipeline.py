"""The sequential pass: calibrate, compress and propagate one decoder layer at a time.

Layer i's linears see inputs produced by the already-compressed layers 0..i-1, so every
stage corrects for the error upstream of it. Only layer i is on the compute device;
cached activations stay on the CPU. The pipeline knows nothing of any method's math; the
layer walk itself (core/walk.py) is shared with every other pass.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import nn

from compressor.core.context import PassContext
from compressor.core.layer_io import run_layer, set_submodule
from compressor.core.measures import (
    bits_per_weight,
    relative_output_error,
    weight_error,
)
from compressor.core.stages import Stage
from compressor.core.stats import LayerStatsCollector
from compressor.core.types import Compressed, LinearStats, ModuleRecord, Target
from compressor.core.walk import LayerSource, walk_layers
from compressor.parts.base import CompressedLinear, materialized

log = logging.getLogger("svdc")
numerics_log = logging.getLogger("svdc.numerics")   # per module; shown under -v only


def module_generator(seed: int, name: str, device: torch.device) -> torch.Generator:
    """A generator seeded from (seed, module name): order-independent and reproducible."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def compress_linear(name: str, layer_index: int, kind: str, linear: nn.Linear,
                    stats: LinearStats, stages: list[Stage], ctx: PassContext
                    ) -> tuple[CompressedLinear, ModuleRecord]:
    """Run every stage on one linear (each stage sees the previous stage's output); the
    parts' floating tensors are stored in ``ctx.storage_dtype``."""
    t0 = time.perf_counter()
    device = ctx.device
    w = linear.weight.detach().to(device=device, dtype=torch.float32)
    bias = None if linear.bias is None else linear.bias.detach().to(device)
    base = Target(name=name, layer_index=layer_index, kind=kind, weight=w, bias=bias,
                  stats=stats, generator=module_generator(ctx.seed, name, device),
                  dtype=ctx.storage_dtype or linear.weight.dtype, seed=ctx.seed)
    result = run_chain(base, [(s.method, s.cfg, s.plan.get(name, {})) for s in stages])
    module, info = result.module.to(device), result.info
    w_hat = module.dense_weight()
    if not torch.isfinite(w_hat).all():
        raise FloatingPointError(f"{name}: the compressed weight has non-finite values; "
                                 f"nothing was written (rerun with --debug and report it)")
    werr = weight_error(w, w_hat)
    oerr = None if stats.gram is None else relative_output_error(w - w_hat, w, stats.gram)
    n_before = w.numel() + (0 if bias is None else bias.numel())
    record = ModuleRecord(
        name=name, layer=layer_index, kind=kind, shape=tuple(w.shape),
        methods=[s.name for s in stages], params_before=n_before,
        params_after=module.stored_numel(),
        bytes_before=n_before * linear.weight.element_size(),
        bytes_after=module.stored_bytes(), weight_rel_err=werr, output_rel_err=oerr,
        seconds=time.perf_counter() - t0, info=info)
    record.info["bits_per_weight"] = round(bits_per_weight(module), 4)
    return module, record


def run_chain(base: Target, chain: list[tuple[Any, Any, dict[str, Any]]]) -> Compressed:
    """(method, config, plan) stages run in order on one linear, each seeing the previous
    stage's output and a generator seeded from (seed, stage, module name): a recipe's stages
    on a linear, and a plan's menu entry the same way. Info keys are prefixed by the stage
    name when there is more than one stage."""
    previous: CompressedLinear | None = None
    info: dict[str, Any] = {}
    for method, cfg, plan in chain:
        target = replace(base, plan=plan, generator=module_generator(
            base.seed, f"{method.name}:{base.name}", base.weight.device))
        result = method.run(target, cfg, previous)
        previous = result.module
        for k, v in result.info.items():
            info[k if len(chain) == 1 else f"{method.name}.{k}"] = v
    assert previous is not None
    return Compressed(previous, info)


@dataclass
class CompressJob:
    """What the compress pass applies, to which linears of each layer."""

    layers_path: str
    stages: list[Stage]
    needs: frozenset[str]
    targets_of: Callable[[nn.Module], dict[str, nn.Module]]
    kind_of: Callable[[str], str]
    grad_stats: dict[str, dict[str, torch.Tensor]] | None = None

    @property
    def true_sequential(self) -> bool:
        return any(s.method.true_sequential(s.cfg) for s in self.stages)


@dataclass
class SequentialResult:
    records: list[ModuleRecord]
    stage_seconds: dict[str, float]


def compress_pass(model: nn.Module, layers: nn.ModuleList, windows: torch.Tensor | None,
                  job: CompressJob, ctx: PassContext, source: LayerSource) -> SequentialResult:
    """Compress every target linear of every decoder layer in place; return report rows.

    ``ctx.resume`` (rank 0's LayerCheckpoints), when given: a layer it holds is loaded instead
    of recomputed (and only propagated); each newly finished layer is saved to it. With
    ranks, ``windows`` is this rank's shard, statistics are summed over ranks, each rank
    compresses its share of each layer's targets and receives the others'. ``windows`` None:
    a data-free run (no statistics, no output errors, nothing propagated).
    """
    for k in ("calibrate", "compress"):
        ctx.times.setdefault(k, 0.0)
    records: list[ModuleRecord] = []
    dist = ctx.dist

    def visit(i, layer, hidden, kw, say):
        targets = job.targets_of(layer)
        done = (ctx.resume.load_layer(i, layer, ctx.device, ctx.storage_dtype)
                if ctx.resume is not None else None)
        dist.fault_point(i)
        if dist.active:   # --- distributed: rank 0's resume decision
            done = dist.share_resumed(layer, list(targets), done, ctx.device, f"layer {i}")
        if done is not None:
            records.extend(done)
            say("resumed")
            return
        rows = compress_layer(i, layer, targets, hidden, kw, job, ctx, say)
        if ctx.resume is not None:
            ctx.resume.save_layer(i, layer, f"{job.layers_path}.{i}.", rows, list(targets))
        records.extend(rows)

    walk_layers(model, job.layers_path, layers, windows, ctx, source, visit)
    return SequentialResult(records=records, stage_seconds=dict(ctx.times))


def compress_layer(i: int, layer: nn.Module, targets: dict[str, nn.Module],
                   hidden: list[torch.Tensor] | None, kw: dict[str, Any] | None,
                   job: CompressJob, ctx: PassContext, say: Callable[[str], None]
                   ) -> list[ModuleRecord]:
    """Calibrate layer i's targets, then compress each (this rank's share, with ranks) in
    place; returns the report rows in target order.

    True-sequential (a stage asks for it, e.g. GPTQ's ``true_sequential``): the targets are
    compressed in groups of linears fed the same input, in execution order (q/k/v, o,
    gate/up, down on Llama), and each group after the first is recalibrated on the outputs
    of the groups already compressed, so o_proj's statistics come from the quantized q/k/v.
    """
    want_absmean = "act_absmean" in job.needs
    if hidden is None:   # data-free: no statistics at all
        layer_stats = {rel: LinearStats() for rel in targets}
        groups = [list(targets)]
    else:
        say("calibrate")
        t = time.perf_counter()
        layer_stats, groups = calibrate_groups(layer, targets, hidden, kw, ctx, want_absmean,
                                               what=f"layer {i}")
        ctx.add_time("calibrate", time.perf_counter() - t)
    if not job.true_sequential:
        groups = [list(targets)]
    rows: dict[str, ModuleRecord] = {}
    for g, group in enumerate(groups):
        if g > 0:
            say(f"calibrate {group[0]} (true-sequential)")
            t = time.perf_counter()
            layer_stats.update(calibrate_groups(
                layer, {rel: targets[rel] for rel in group}, hidden, kw, ctx, want_absmean,
                what=f"layer {i}", stop_after=group[-1])[0])
            ctx.add_time("calibrate", time.perf_counter() - t)
        say("compress")
        t = time.perf_counter()
        rows.update(_compress_group(i, layer, targets, group, layer_stats, job, ctx))
        ctx.add_time("compress", time.perf_counter() - t)
    return [rows[rel] for rel in targets]


def _compress_group(i: int, layer: nn.Module, targets: dict[str, nn.Module], group: list[str],
                    layer_stats: dict[str, LinearStats], job: CompressJob, ctx: PassContext
                    ) -> dict[str, ModuleRecord]:
    """Compress the ``group`` of ``targets`` (this rank's share, with ranks) and install them
    in ``layer``; with ranks, receive the others' share. Returns rel -> report row.

    Each compressed module also replaces its dense linear in ``targets`` (the caller's dict),
    so the dense weight is freed as soon as it is compressed, not at the end of the layer."""
    rows: dict[str, ModuleRecord] = {}
    dist = ctx.dist
    owner = dist.assign({rel: targets[rel] for rel in group}) if dist.active else None
    prefix = f"{job.layers_path}.{i}."
    with dist.guard(f"the compression of layer {i}"):
        for rel in group:
            if owner is not None and owner[rel] != dist.rank:
                continue  # another rank's share
            full = prefix + rel
            stats = with_gradients(layer_stats.pop(rel), (job.grad_stats or {}).get(full),
                                   ctx.device)
            module, rec = compress_linear(full, i, job.kind_of(rel), targets[rel], stats,
                                          job.stages, ctx)
            set_submodule(layer, rel, module)
            targets[rel] = module
            rows[rel] = rec
            _log_numerics(rec)
    if owner is not None:  # --- distributed: every rank gets every module
        rows = dist.share_modules(layer, owner, rows, ctx.device, f"layer {i}")
    return rows


class _GroupDone(Exception):
    """Raised from the hook of a group's last linear: the rest of the forward is not needed."""


def calibrate_groups(layer: nn.Module, targets: dict[str, nn.Module],
                     hidden: list[torch.Tensor], kwargs: dict[str, Any], ctx: PassContext,
                     want_absmean: bool, what: str = "a layer", stop_after: str | None = None
                     ) -> tuple[dict[str, LinearStats], list[list[str]]]:
    """Input statistics of every target linear of one layer over the calibration inputs,
    and the targets grouped by shared input in execution order.

    The Gram is always collected: the report's output error on calibration inputs needs it.
    With ranks, the sums are reduced over ranks before they become statistics.
    ``stop_after``: end each forward once that target has been fed (its hooks have run).
    """
    with LayerStatsCollector(targets, True, want_absmean) as collector, materialized(layer):
        stop = None
        if stop_after is not None:   # registered after the collector's hooks: runs after them
            def _stop(*_):
                raise _GroupDone
            stop = targets[stop_after].register_forward_hook(_stop)
        try:
            for x in hidden:
                collector.new_call()
                try:
                    run_layer(layer, x.to(ctx.device), kwargs)
                except _GroupDone:
                    pass
        finally:
            if stop is not None:
                stop.remove()
    ctx.dist.reduce_accumulators(collector.accumulators(), what)
    return collector.stats(), collector.groups(list(targets))


def with_gradients(stats: LinearStats, grads: dict[str, torch.Tensor] | None,
                   device: torch.device) -> LinearStats:
    """``stats`` plus the target's gradient statistics (float32, on ``device``), if any."""
    if grads is None:
        return stats

    def dev(name: str) -> torch.Tensor | None:
        t = grads.get(name)
        return None if t is None else t.to(device=device, dtype=torch.float32)
    return replace(stats, fisher=dev("fisher"), fisher_rows=dev("fisher_rows"),
                   fisher_cols=dev("fisher_cols"), grad_absmean=dev("grad_absmean"))


_NOTEWORTHY = ("retries", "damp_retries", "eig_floored", "eig_floor_count", "floored", "dead_columns",
               "dead_channels", "fisher_floored", "weight_floored", "floored_channels")


def _noteworthy(rec: ModuleRecord):
    for k, v in rec.info.items():
        if k.rsplit(".", 1)[-1] in _NOTEWORTHY and v:
            yield k, v


def _log_numerics(rec: ModuleRecord) -> None:
    """Log what departed from the textbook path (damping retries, floors, dead channels),
    one line per module on ``svdc.numerics`` (shown under -v); a default run prints the
    per-event summary of :func:`numerics_summary` instead.

    The routine damping every module gets is in the report, not the log.
    """
    for k, v in _noteworthy(rec):
        numerics_log.info("%s: %s = %s", rec.name, k, v)
    for k, v in rec.info.items():
        if k.rsplit(".", 1)[-1] == "damp":
            numerics_log.debug("%s: %s = %s", rec.name, k, v)


def numerics_summary(records: list[dict[str, Any]] | list[ModuleRecord]) -> dict[str, dict[str, Any]]:
    """Per numerics event class (``eora.eig_floored``, ``gptq.damp_retries``, ...): how many
    modules had it, the largest and the summed count, and the module with the largest."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        rec = r if isinstance(r, ModuleRecord) else None
        name = rec.name if rec else r["name"]
        info = rec.info if rec else r["info"]
        for k, v in info.items():
            if k.rsplit(".", 1)[-1] not in _NOTEWORTHY or not v:
                continue
            n = float(v) if isinstance(v, (int, float)) else 1.0
            e = out.setdefault(k, {"modules": 0, "max": n, "total": 0.0, "max_module": name})
            e["modules"] += 1
            e["total"] += n
            if n > e["max"]:
                e["max"], e["max_module"] = n, name
    for e in out.values():
        for key in ("max", "total"):
            if float(e[key]).is_integer():
                e[key] = int(e[key])
    return dict(sorted(out.items()))


def numerics_lines(summary: dict[str, dict[str, Any]]) -> list[str]:
    """One line per event class, e.g. ``eora.eig_floored: 210 modules (max 27)``."""
    return [f"{k}: {e['modules']} module{'s' if e['modules'] != 1 else ''} (max {e['max']})"
            for k, e in summary.items()]
