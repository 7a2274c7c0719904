"""Read a compressed folder back: rebuild the modules from their specs and check every key, so nothing is silently random-initialized."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from compressor.errors import UserError
from compressor.parts import CompressedLinear

from .save import FORMAT, FORMAT_VERSION, INDEX, WEIGHTS


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / INDEX
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [WEIGHTS]
    out: dict[str, torch.Tensor] = {}
    for f in files:
        p = folder / f
        if not p.is_file():
            raise UserError(f"{folder}: weight file {f} is missing; the checkpoint is incomplete, re-create it")
        try:
            out.update(load_file(str(p)))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{p}: not a readable safetensors file ({e}); the checkpoint is corrupt, re-create it") from None
    return out


def is_compressed_folder(path: str | Path) -> bool:
    cfg = Path(path) / "config.json"
    return cfg.is_file() and "compression_config" in json.loads(cfg.read_text())


def _no_init_weights():
    """transformers' context that skips weight initialization (moved in transformers 5)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def load_compressed(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None) -> nn.Module:
    """Rebuild a model written by ``save_compressed``; every stored key must be used."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: no config.json; not a checkpoint folder (pass the folder `svdc compress -o` wrote)")
    raw = json.loads((folder / "config.json").read_text())
    cc = raw.get("compression_config")
    if not cc or cc.get("format") != FORMAT:
        raise UserError(f"{folder}: not an svdc compressed checkpoint (no compression_config); "
                        f"load it with transformers instead")
    if cc.get("version", 0) > FORMAT_VERSION:
        raise UserError(f"{folder}: written by a newer svdc (format {cc['version']}); upgrade svdc")
    store_dtype = getattr(torch, cc["dtype"])
    config = AutoConfig.from_pretrained(folder)
    with _no_init_weights():   # every tensor is overwritten below: random init is wasted time
        model = AutoModelForCausalLM.from_config(config, dtype=store_dtype)
    for name, spec in cc["modules"].items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, CompressedLinear.from_spec(spec, store_dtype))
    state = read_weights(folder)
    expected = set(model.state_dict())
    aliases = cc.get("tied_aliases", {})
    missing = sorted(expected - set(state) - set(aliases))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise UserError(f"{folder}: checkpoint does not match its config "
                        f"({len(missing)} missing keys, e.g. {missing[:2]}; {len(unexpected)} unexpected, "
                        f"e.g. {unexpected[:2]}); it is corrupt or from another model, re-create it")
    for alias, src in aliases.items():
        state[alias] = state[src]
    model.load_state_dict(state, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.eval()
    if dtype is not None:
        model.to(dtype)
    return model.to(device)
