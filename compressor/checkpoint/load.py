"""Read a compressed folder back: rebuild the modules from their specs and check every key, so nothing is silently random-initialized."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from compressor.errors import UserError
from compressor.models.integrity import CONFIG_ERRORS
from compressor.parts import CompressedLinear

from .save import FORMAT, FORMAT_VERSION, INDEX, WEIGHTS
from .verify import read_config, verify_weights


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / INDEX
    try:
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [WEIGHTS]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{index} is corrupt ({_first_line(e)}); re-create the checkpoint") from None
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
    """True for a folder whose config.json has a compression_config; a corrupt config.json
    is reported (UserError naming it), not guessed about."""
    return (Path(path) / "config.json").is_file() and "compression_config" in read_config(Path(path))


def _no_init_weights():
    """transformers' context that skips weight initialization (moved in transformers 5)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def load_compressed(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None,
                    verify: bool = True) -> nn.Module:
    """Rebuild a model written by ``save_compressed``; every stored key must be used.
    ``verify``: check the weight files against the sha256 recorded in config.json first."""
    folder = Path(path)
    cc = compression_config_of(folder, verify)
    model = build_model(folder, cc)
    state = read_weights(folder)
    aliases = cc.get("tied_aliases", {})
    check_keys(folder, set(model.state_dict()), set(state), aliases)
    for alias, src in aliases.items():
        state[alias] = state[src]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{folder}: a stored tensor does not fit its module "
                        f"({_first_line(e)}); the checkpoint is corrupt, re-create it") from None
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    model.eval()
    if dtype is not None:
        model.to(dtype)
    return model.to(device)


def check_keys(folder: Path, expected: set[str], stored: set[str], aliases: dict[str, str]) -> None:
    """Every key the model expects is stored (or a tied alias of a stored one), and nothing
    else is: a mismatch is a corrupt checkpoint or one from another model."""
    missing = sorted(expected - stored - set(aliases))
    unexpected = sorted(stored - expected)
    if missing or unexpected:
        raise UserError(f"{folder}: checkpoint does not match its config "
                        f"({len(missing)} missing keys, e.g. {missing[:2]}; {len(unexpected)} unexpected, "
                        f"e.g. {unexpected[:2]}); it is corrupt or from another model, re-create it")


def compression_config_of(folder: Path, verify: bool) -> dict:
    """The folder's compression_config, checked (format, version) and, with ``verify``, its
    weight files against the recorded sha256."""
    cc = read_config(folder).get("compression_config")
    if not isinstance(cc, dict) or cc.get("format") != FORMAT:
        raise UserError(f"{folder}: not an svdc compressed checkpoint (no compression_config); "
                        f"load it with transformers instead")
    if not isinstance(cc.get("version", 0), int) or cc.get("version", 0) > FORMAT_VERSION:
        raise UserError(f"{folder}: written by a newer svdc (format {cc['version']}); upgrade svdc")
    if verify:
        verify_weights(folder, cc)
    return cc


def build_model(folder: Path, cc: dict, empty: bool = False) -> nn.Module:
    """The model skeleton from config.json with every compressed linear in place (as data:
    never the folder's own code). ``empty``: parameters and stored tensors on the meta device
    (no memory; streaming reads them layer by layer)."""
    try:
        return _build(folder, cc, empty)
    except (AttributeError, OSError, *CONFIG_ERRORS) as e:
        raise UserError(f"{folder}/config.json: a field is missing or has the wrong type "
                        f"({type(e).__name__}: {' '.join(str(e).split())}); the checkpoint is corrupt, "
                        f"re-create it") from None


def _build(folder: Path, cc: dict, empty: bool) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    from compressor.core.shards import skeleton

    store_dtype = getattr(torch, cc["dtype"])
    if not isinstance(store_dtype, torch.dtype):
        raise TypeError(f"dtype {cc['dtype']!r} is not a torch dtype")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    if empty:
        model = skeleton(config, store_dtype)
    else:
        with _no_init_weights():   # every tensor is overwritten: random init is wasted time
            model = AutoModelForCausalLM.from_config(config, dtype=store_dtype,
                                                     trust_remote_code=False)
    with torch.device("meta") if empty else contextlib.nullcontext():
        for name, spec in cc["modules"].items():
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, CompressedLinear.from_spec(spec, store_dtype))
    return model


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
