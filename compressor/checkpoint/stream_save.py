"""The writer of a streamed run: the output as one safetensors shard per decoder layer plus one
for everything outside the layers, with an index (a normal sharded Hugging Face folder).

The layer shards are the run's resume checkpoints (core/resume.py writes each finished layer
in its written form), hard-linked into the output (copied across file systems), so a model
larger than RAM is written without holding it. A layer that is resident when the output is
written (heal reloaded and trained it) is written from memory instead.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from compressor.core.resume import LayerCheckpoints, layer_tensors
from compressor.core.shards import is_resident
from compressor.parts import CompressedLinear

from .save import FORMAT, FORMAT_VERSION, INDEX, unique_state, write_config_and_tokenizer
from .verify import HASHES, weight_hashes

OUTSIDE = "model-outside.safetensors"


def layer_shard_name(i: int) -> str:
    return f"layer-{i:05d}.safetensors"


def save_streamed(model: nn.Module, tokenizer: Any, folder: Path, layers_path: str,
                  layers: nn.ModuleList, ckpt: LayerCheckpoints, dtype: torch.dtype,
                  extra_config: dict[str, Any] | None = None) -> dict[str, int]:
    """Write the output into ``folder`` (a temporary folder): layer shards, the outside
    shard, the index, config.json with its compression_config, generation config, tokenizer."""
    weight_map: dict[str, str] = {}
    specs: dict[str, Any] = {}
    for i, layer in enumerate(layers):
        name, prefix = layer_shard_name(i), f"{layers_path}.{i}."
        if is_resident(layer):
            save_file(layer_tensors(layer, prefix, dtype), str(folder / name),
                      metadata={"format": "pt"})
            specs.update({prefix + rel: m.spec() for rel, m in layer.named_modules()
                          if isinstance(m, CompressedLinear)})
        else:
            _link_or_copy(ckpt.layer_file(i), folder / name)
            meta = ckpt.layer_meta(i)
            specs.update({meta["prefix"] + rel: s for rel, s in meta["specs"].items()})
        with safe_open(str(folder / name), framework="pt") as f:
            weight_map.update({k: name for k in f.keys()})
    rest, aliases = unique_state(model, dtype, skip=layers_path + ".")
    save_file(rest, str(folder / OUTSIDE), metadata={"format": "pt"})
    weight_map.update({k: OUTSIDE for k in rest})
    files = sorted(set(weight_map.values()))
    total = sum((folder / f).stat().st_size for f in files)
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                            "weight_map": dict(sorted(weight_map.items()))},
                                           indent=1))
    cc = {"format": FORMAT, "version": FORMAT_VERSION, "dtype": str(dtype).removeprefix("torch."),
          "modules": dict(sorted(specs.items())), "tied_aliases": aliases, "streamed": True,
          **(extra_config or {}), HASHES: weight_hashes(folder, files)}
    write_config_and_tokenizer(model, tokenizer, folder, dtype, cc)
    return {"files": len(files), "bytes": total}


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (the checkpoint folder is the output's sibling); a copy where the file
    system refuses links. Never follows a link in place of ``src``."""
    if src.is_symlink():
        raise OSError(f"{src} is a symbolic link; svdc never writes through links")
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst, follow_symlinks=False)

