"""Write a compressed model as a normal Hugging Face folder (safetensors only, never pickle).

config.json carries a compression_config section mapping each replaced module to its parts'
spec; model.safetensors (one shard per decoder layer when large) holds every tensor, the
compressed parts' buffers included.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from compressor.core.resume import WEIGHT_META, LayerCheckpoints, layer_entries
from compressor.core.shards import is_resident
from compressor.models.architectures import decoder_layers
from compressor.parts import CompressedLinear
from compressor.safetensors_io import Entry, file_entries, tensor_entry, write_safetensors

from .verify import HASHES, weight_hashes

FORMAT = "svdc"


FORMAT_VERSION = 1


SHARD_BYTES = 4 * 1024**3


WEIGHTS = "model.safetensors"


INDEX = "model.safetensors.index.json"


OUTSIDE = "model-outside.safetensors"


def compressed_modules(model: nn.Module) -> dict[str, CompressedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, CompressedLinear)}


def _uncompressed_float(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Floating parameters and buffers outside the compressed linears (whose parts keep the
    dtypes their formats define, e.g. float16 quantization scales)."""
    inside = tuple(n + "." for n in compressed_modules(model))
    return [(k, t) for k, t in model.state_dict(keep_vars=True).items()
            if t.is_floating_point() and not k.startswith(inside)]


def round_uncompressed(model: nn.Module, dtype: torch.dtype) -> None:
    """Round the uncompressed tensors to ``dtype`` in place (keeping their own dtype), so the
    in-memory model computes with exactly the values ``save_compressed`` writes."""
    with torch.no_grad():
        for _, t in _uncompressed_float(model):
            if t.dtype != dtype:
                t.copy_(t.to(dtype))


def unique_state(model: nn.Module, dtype: torch.dtype, skip: str | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict without aliases (tied embeddings): safetensors stores a tensor once.
    Uncompressed floating tensors are written in ``dtype``. ``skip``: leave out the keys under
    this prefix (a streamed run's decoder layers, written shard by shard)."""
    cast = {k for k, _ in _uncompressed_float(model)}
    seen: dict[tuple, str] = {}
    out, aliases = {}, {}
    for k, t in model.state_dict().items():
        if skip is not None and k.startswith(skip):
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            aliases[k] = seen[key]
            continue
        seen[key] = k
        t = t.detach().to("cpu")
        out[k] = (t.to(dtype) if k in cast else t).contiguous()
    return out, aliases


def write_weights(folder: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> list[str]:
    """Write safetensors shards of at most SHARD_BYTES; return the file names."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, t in tensors.items():
        nb = t.numel() * t.element_size()
        if shards[-1] and size + nb > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += nb
    if len(shards) == 1:
        save_file(shards[0], str(folder / WEIGHTS), metadata=metadata)
        return [WEIGHTS]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(folder / name), metadata=metadata)
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return names


def save_compressed(model: nn.Module, tokenizer: Any, folder: Path,
                    dtype: torch.dtype | None = None,
                    extra_config: dict[str, Any] | None = None,
                    checkpoints: LayerCheckpoints | None = None) -> dict[str, int]:
    """Write config, weights and tokenizer into ``folder`` (already a temporary folder): the
    one writer of every run mode. A decoder layer held in memory is written from memory; one
    that is not (a streamed run frees each layer) is taken from its resume checkpoint in
    ``checkpoints``, which holds the same bytes. Up to SHARD_BYTES the weights are one
    model.safetensors; above it, one shard per decoder layer (the checkpoint hard-linked when
    it is on disk) plus one for the rest, with an index. So the layout and the bytes depend on
    the model and the recipe only, never on the mode.
    ``dtype``: the storage dtype of the uncompressed tensors (default: the model's)."""
    dtype = dtype or next(model.parameters()).dtype
    layers_path, layers = decoder_layers(model)
    parts = [_layer_part(i, layer, f"{layers_path}.{i}.", dtype, checkpoints)
             for i, layer in enumerate(layers)]
    rest, aliases = unique_state(model, dtype, skip=layers_path + ".")
    outside = [tensor_entry(k, t) for k, t in rest.items()]
    total = sum(e.nbytes for e in outside) + sum(e.nbytes for p in parts for e in p.entries)
    if total <= SHARD_BYTES:
        write_safetensors(folder / WEIGHTS, [e for p in parts for e in p.entries] + outside,
                          WEIGHT_META)
        files = [WEIGHTS]
    else:
        weight_map = {}
        for i, p in enumerate(parts):
            name = layer_shard_name(i)
            if p.file is not None:
                _link_or_copy(p.file, folder / name)
            else:
                write_safetensors(folder / name, p.entries, WEIGHT_META)
            weight_map.update({e.name: name for e in p.entries})
        write_safetensors(folder / OUTSIDE, outside, WEIGHT_META)
        weight_map.update({e.name: OUTSIDE for e in outside})
        files = sorted(set(weight_map.values()))
        (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                                "weight_map": dict(sorted(weight_map.items()))},
                                               indent=1))
    specs = {n: m.spec() for n, m in compressed_modules(model).items()}
    for p in parts:
        specs.update(p.specs)
    cc = {"format": FORMAT, "version": FORMAT_VERSION, "dtype": str(dtype).removeprefix("torch."),
          "modules": dict(sorted(specs.items())), "tied_aliases": aliases,
          **(extra_config or {}), HASHES: weight_hashes(folder, files)}
    write_config_and_tokenizer(model, tokenizer, folder, dtype, cc)
    return {"files": len(files), "bytes": sum((folder / f).stat().st_size for f in files)}


@dataclass
class _LayerPart:
    """One decoder layer's tensors to write, its compressed modules' specs (full names), and
    the checkpoint file that already holds exactly these bytes (None: written from memory)."""
    entries: list[Entry]
    specs: dict[str, Any]
    file: Path | None = None


def _layer_part(i: int, layer: nn.Module, prefix: str, dtype: torch.dtype,
                checkpoints: LayerCheckpoints | None) -> _LayerPart:
    if is_resident(layer):
        return _LayerPart(layer_entries(layer, prefix, dtype), {})
    if checkpoints is None:
        raise RuntimeError(f"decoder layer {i} is not in memory and no checkpoints were given")
    meta, file = checkpoints.layer_meta(i), checkpoints.layer_file(i)
    return _LayerPart(file_entries(file),
                      {meta["prefix"] + rel: s for rel, s in meta["specs"].items()}, file)


def layer_shard_name(i: int) -> str:
    return f"layer-{i:05d}.safetensors"


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (the checkpoint folder is the output's sibling); a copy where the file
    system refuses links. Never follows a link in place of ``src``."""
    if src.is_symlink():
        raise OSError(f"{src} is a symbolic link; svdc never writes through links")
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst, follow_symlinks=False)


def write_config_and_tokenizer(model: nn.Module, tokenizer: Any, folder: Path,
                               dtype: torch.dtype, cc: dict[str, Any]) -> None:
    """config.json (the model's, in ``dtype``, with its compression_config ``cc``), the
    generation config and the tokenizer: what every writer puts beside the weights."""
    cfg = model.config.to_dict()
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    cfg.pop("torch_dtype", None)
    cfg["compression_config"] = cc
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:
        gen_cfg.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
