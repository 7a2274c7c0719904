"""Per-layer weight streaming: compress a model larger than host memory.

The model is built on the meta device (parameters only; buffers such as rotary tables are
real). Embeddings, final norm and head are read from the safetensors shards at start; each
decoder layer's weights are read when the sequential pass reaches it, and once compressed and
propagated, the layer is written to its own output shard and returned to the meta device. Host
peak ≈ runtime + embeddings + head + one layer and the scratch of the matrix being compressed +
the layer's Gram matrices + calibration activations (README, Scale; BENCHMARKS.md, Streaming).

What cannot stream, and says so: statistics from a backward pass through the whole model
(Fisher, |grad|: FWSVD, GWQ, data-aware LQ-LoRA) unless they are loaded from a --fisher-file
computed where the model fits; resuming (``--resume``) and evaluation of the result (run
``svdc eval --stream`` separately).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from compressor.core.shards import (
    ShardReader,
    free_module,
    large_allocations_to_os,
    load_module,
    materialize_outside,
    skeleton,
)
from compressor.errors import UserError

log = logging.getLogger("svdc")


class LayerStream:
    """The sequential pass's ``layer_io``: reads layer i before it is processed, writes the
    compressed layer to ``out/layer-XXXXX.safetensors`` and frees it after."""

    def __init__(self, model: nn.Module, reader: ShardReader, layers_path: str, out: Path,
                 storage_dtype: torch.dtype):
        self.model, self.reader, self.layers_path = model, reader, layers_path
        self.out, self.storage_dtype = out, storage_dtype
        self.weight_map: dict[str, str] = {}
        self.specs: dict[str, Any] = {}
        self.total_bytes = 0

    def load(self, i: int, layer: nn.Module) -> None:
        load_module(self.model, self.reader, f"{self.layers_path}.{i}.", layer, "cpu")

    def release(self, i: int, layer: nn.Module) -> None:
        from compressor.parts import CompressedLinear
        prefix = f"{self.layers_path}.{i}."
        inside = []
        for rel, mod in layer.named_modules():
            if isinstance(mod, CompressedLinear):
                self.specs[prefix + rel] = mod.spec()
                inside.append(rel + ".")
        tensors = {}
        for k, t in layer.state_dict().items():
            t = t.detach().to("cpu")
            if t.is_floating_point() and not k.startswith(tuple(inside)):
                t = t.to(self.storage_dtype)   # norms etc.: the storage dtype, as save_compressed
            tensors[prefix + k] = t.contiguous()
        fname = f"layer-{i:05d}.safetensors"
        save_file(tensors, str(self.out / fname), metadata={"format": "pt"})
        self.weight_map.update({k: fname for k in tensors})
        self.total_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
        free_module(layer)


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


def stream_compress(recipe: Any, *, force: bool = False, progress: Any = None,
                    command: str = "") -> dict[str, Any]:
    """``api.compress`` for a model that need not fit in memory; returns the report."""
    from transformers import AutoConfig, AutoTokenizer

    from compressor import __version__
    from compressor.accounting import bits_split, bytes_before_in, totals, written_entries
    from compressor.atomic import atomic_dir, check_output
    from compressor.core.gradients import GRAD_STATS
    from compressor.core.pipeline import sequential_compress
    from compressor.core.stages import Stage, stage_needs
    from compressor.data import calibration_windows
    from compressor.safety.limits import warn_few_tokens
    from compressor.models import (
        decoder_layers,
        linear_kind,
        resolve_device,
        resolve_storage_dtype,
        target_linears,
    )
    from compressor.models.device import checkpoint_dtype, resolve_dtype
    from compressor.models.resolve import resolve_model
    from compressor.runtime import machine, peak_memory, versions

    t_start = time.perf_counter()
    output = Path(recipe.output)
    check_output(output, force)
    device = resolve_device(recipe.device)
    stages = [Stage.of(cfg) for cfg in recipe.stages]
    needs = stage_needs(stages)
    res = resolve_model(recipe.model)
    if res.gguf_file:
        raise UserError("streaming reads safetensors checkpoints; a .gguf model must be loaded whole")
    config = AutoConfig.from_pretrained(res.path)
    dtype = resolve_dtype(recipe.dtype, config, device)
    own = checkpoint_dtype(config)
    storage_dtype = resolve_storage_dtype(recipe.storage_dtype,
                                          str(own).removeprefix("torch.") if own else None, dtype)
    tokenizer = AutoTokenizer.from_pretrained(res.path)
    large_allocations_to_os()
    reader = ShardReader(res.path)
    model = skeleton(config, dtype)
    layers_path, layers = decoder_layers(model)
    materialize_outside(model, reader, layers_path)

    inc, exc = recipe.targets.include, recipe.targets.exclude
    target_names = [f"{layers_path}.{i}.{rel}" for i, layer in enumerate(layers)
                    for rel in target_linears(layer, include=inc, exclude=exc)]
    if not target_names:
        raise UserError(f"no linear layers matched the target patterns include={inc} exclude={exc}")
    shapes, before_targets, before_model = _footprint(model, target_names, own or dtype)

    cal = recipe.calibration
    seqlen = min(cal.seqlen, getattr(config, "max_position_embeddings", cal.seqlen) or cal.seqlen)
    windows = calibration_windows(tokenizer, cal.dataset, cal.nsamples, seqlen, cal.seed)
    warn_few_tokens(recipe.stages, int(windows.numel()), max(n for _, n in shapes.values()))

    grad_stats = None
    want = set(needs & GRAD_STATS)
    if want:
        grad_stats = _streamed_gradients(recipe, windows, shapes, want, stages)

    weights = ShardWeights(reader, target_names, device)
    fisher = ({n: g["fisher"] for n, g in grad_stats.items() if "fisher" in g} if grad_stats else None)
    for st in stages:
        st.plan = st.method.run_plan(weights, st.cfg, fisher, dtype=storage_dtype) or {}

    with atomic_dir(output, force) as tmp:
        stream = LayerStream(model, reader, layers_path, tmp, storage_dtype)
        result = sequential_compress(
            model, layers_path, layers,
            targets_of=lambda layer: target_linears(layer, include=inc, exclude=exc),
            kind_of=linear_kind, windows=windows, stages=stages, needs=needs, device=device,
            seed=cal.seed, grad_stats=grad_stats, progress=progress, resume=None,
            storage_dtype=storage_dtype, layer_io=stream)
        _write_outside(model, layers_path, tmp, stream, storage_dtype, config, tokenizer, recipe)
        bytes_before_in(result.records, own or dtype)
        report = {"svdc_version": __version__, "command": command, "streamed": True,
                  "recipe": recipe.model_dump(mode="json"), "device": str(device),
                  "dtype": str(dtype).removeprefix("torch."),
                  "storage_dtype": str(storage_dtype).removeprefix("torch."),
                  "calibration": {"dataset": cal.dataset, "nsamples": int(windows.shape[0]),
                                  "seqlen": int(windows.shape[1]), "seed": cal.seed},
                  "modules": [r.to_dict() for r in result.records],
                  "totals": totals(written_entries(tmp), target_names, before_targets, before_model),
                  "stage_seconds": {**{f"layers.{k}": v for k, v in result.stage_seconds.items()},
                                    "total": time.perf_counter() - t_start},
                  "versions": versions(), "machine": machine(device),
                  "peak_memory": peak_memory(device)}
        report["totals"]["targets"]["bits_split"] = bits_split(tmp, target_names,
                                                               before_targets[0])
        (tmp / "report.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def _write_outside(model: nn.Module, layers_path: str, tmp: Path, stream: Any,
                   storage_dtype: torch.dtype, config: Any, tokenizer: Any, recipe: Any) -> None:
    """Everything but the streamed layers: the tensors outside them (tied weights once), the
    shard index, config.json with the compression_config, tokenizer and recipe."""
    from compressor.checkpoint.save import FORMAT, FORMAT_VERSION, INDEX
    from compressor.checkpoint.verify import HASHES, weight_hashes
    from compressor.recipe import dump_recipe
    prefix = layers_path + "."
    rest, aliases, seen_ptr = {}, {}, {}
    for k, t in model.state_dict().items():
        if k.startswith(prefix):
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen_ptr:
            aliases[k] = seen_ptr[key]
            continue
        seen_ptr[key] = k
        rest[k] = (t.detach().to(storage_dtype) if t.is_floating_point() else t).contiguous()
    persistent = set(_persistent_keys(model))
    rest = {k: v for k, v in rest.items() if k in persistent}
    save_file(rest, str(tmp / "model-outside.safetensors"), metadata={"format": "pt"})
    weight_map = {**stream.weight_map, **{k: "model-outside.safetensors" for k in rest}}
    total = stream.total_bytes + sum(t.numel() * t.element_size() for t in rest.values())
    (tmp / INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                         "weight_map": weight_map}, indent=1))
    cfg = config.to_dict()
    cfg["dtype"] = str(storage_dtype).removeprefix("torch.")
    cfg.pop("torch_dtype", None)
    cfg["compression_config"] = {"format": FORMAT, "version": FORMAT_VERSION,
                                 "dtype": str(storage_dtype).removeprefix("torch."),
                                 "modules": stream.specs, "tied_aliases": aliases,
                                 "streamed": True,
                                 HASHES: weight_hashes(tmp, sorted(set(weight_map.values())))}
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
    tokenizer.save_pretrained(tmp)
    (tmp / "recipe.yaml").write_text(dump_recipe(recipe))


def _footprint(model: nn.Module, target_names: list[str], dtype: torch.dtype
               ) -> tuple[dict[str, tuple[int, int]], tuple[int, int], tuple[int, int]]:
    """Target shapes and the (params, bytes) of the targets and of the whole model, from the
    meta skeleton (nothing is read)."""
    shapes = {n: tuple(model.get_submodule(n).weight.shape) for n in target_names}
    elt = torch.empty((), dtype=dtype).element_size()
    before_targets = (sum(a * b for a, b in shapes.values()),
                      sum(a * b for a, b in shapes.values()) * elt)
    seen, n_all = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n_all += p.numel()
    before_model = (n_all, n_all * elt)

    return shapes, before_targets, before_model


def _persistent_keys(model: nn.Module) -> list[str]:
    """state_dict keys (non-persistent buffers such as rotary tables are not in it)."""
    return list(model.state_dict().keys())


def _streamed_gradients(recipe: Any, windows: torch.Tensor, shapes: dict[str, tuple[int, int]],
                        want: set[str], stages: list[Any]) -> dict[str, dict[str, torch.Tensor]]:
    from compressor.core.gradient_file import gradient_fingerprint, load_gradient_stats
    g = recipe.gradients
    names = ", ".join(s.name for s in stages)
    if not (g.fisher_file and Path(g.fisher_file).is_file()):
        raise UserError(
            f"{names} needs gradient statistics ({', '.join(sorted(want))}) from a backward pass "
            "through the whole model, which --stream does not hold in memory; compute them once "
            "where the model fits (svdc compress MODEL ... --fisher-file F, same calibration "
            "flags) and pass --fisher-file F with --stream")
    n = min(g.nsamples or windows.shape[0], windows.shape[0])
    fp = gradient_fingerprint(windows[:n], shapes)
    stats, _ = load_gradient_stats(g.fisher_file, expected_names=shapes,
                                   expected_meta={"fingerprint": fp})
    return stats
