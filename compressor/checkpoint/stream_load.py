"""Load a model larger than RAM: built on the meta device with the embeddings, final norm and
head resident, and each decoder layer read from the safetensors shards just before its forward
and freed right after (a forward pre-hook and a forward hook per layer).

Any forward works (lm-eval, generation), at the cost of reading every layer once per forward;
``evaluate_stream.streamed_perplexity`` instead holds one layer while every window passes
through it, reading each layer once per evaluation. Works for an svdc output folder (its
compressed modules rebuilt empty, every key checked as ``load_compressed`` does) and for a
plain safetensors checkpoint folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.core.layer_io import move_all_but_layers
from compressor.core.shards import (
    ShardReader,
    free_module,
    load_module,
    materialize_outside,
    skeleton,
)
from compressor.errors import UserError

from .load import build_model, check_keys, compression_config_of, is_compressed_folder

_ATTR = "_svdc_streamed_layers"


class StreamedLayers:
    """A streamed model's decoder layers: layer i is read onto the device its input is on
    when its forward starts and freed when it ends, unless ``holding(i, ...)`` keeps it."""

    def __init__(self, model: nn.Module, reader: ShardReader, layers_path: str,
                 layers: nn.ModuleList, aliases: dict[str, str], cast: torch.dtype | None):
        self.model, self.reader, self.layers_path, self.layers = model, reader, layers_path, layers
        self.aliases, self.cast = aliases, cast
        self._held: set[int] = set()
        self.reads = 0              # layer reads so far (a layer-major pass reads each once)
        self._hooks = []
        for i, layer in enumerate(layers):
            self._hooks.append(layer.register_forward_pre_hook(partial(self._before, i),
                                                               with_kwargs=True))
            self._hooks.append(layer.register_forward_hook(partial(self._after, i)))

    def load(self, i: int, device: torch.device | str) -> nn.Module:
        layer = self.layers[i]
        load_module(self.model, self.reader, f"{self.layers_path}.{i}.", layer, device,
                    self.aliases)
        if self.cast is not None:
            layer.to(self.cast)
        self.reads += 1
        return layer

    def free(self, i: int) -> None:
        free_module(self.layers[i])

    @contextmanager
    def holding(self, i: int, device: torch.device | str) -> Iterator[nn.Module]:
        """Layer i resident on ``device`` for the block (its hooks leave it alone)."""
        self._held.add(i)
        try:
            yield self.load(i, device)
        finally:
            self._held.discard(i)
            self.free(i)

    def _before(self, i: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if i not in self._held:
            hidden = args[0] if args else kwargs["hidden_states"]
            self.load(i, hidden.device)

    def _after(self, i: int, module: nn.Module, args: tuple, output: Any) -> None:
        if i not in self._held:
            self.free(i)


def streamed_layers(model: nn.Module) -> StreamedLayers | None:
    """The streaming machinery of a model ``load_streamed`` returned, else None."""
    return getattr(model, _ATTR, None)


def load_streamed(path: str | Path, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None, verify: bool = True) -> nn.Module:
    """A model whose decoder layers stay on disk until used (module docstring).

    ``dtype``: the compute dtype (default: the checkpoint's own); an svdc output is cast the
    way ``load_compressed(dtype=...)`` casts it. ``verify``: check an svdc output's weight
    files against their recorded sha256 first (one read of every file, nothing kept).
    Move the model with ``device`` here, not ``model.to``: the layers are on the meta device.
    """
    from compressor.models import decoder_layers
    folder = Path(path)
    if is_compressed_folder(folder):
        cc = compression_config_of(folder, verify)
        model = build_model(folder, cc, empty=True)
        aliases, cast = dict(cc.get("tied_aliases", {})), dtype
        reader = ShardReader(folder)
        check_keys(folder, set(model.state_dict()), set(reader.where), aliases)
    else:
        model, reader = _plain_skeleton(folder, dtype), ShardReader(folder)
        aliases, cast = {}, None
    layers_path, layers = decoder_layers(model)
    materialize_outside(model, reader, layers_path, aliases)
    if cast is not None:
        move_all_but_layers(model, layers_path, cast)
    move_all_but_layers(model, layers_path, device)
    setattr(model, _ATTR, StreamedLayers(model, reader, layers_path, layers, aliases, cast))
    return model


def _plain_skeleton(folder: Path, dtype: torch.dtype | None) -> nn.Module:
    """The meta skeleton of a plain checkpoint folder, built from transformers' own classes."""
    from compressor.models.device import checkpoint_dtype
    config = plain_config(folder)
    return skeleton(config, dtype or checkpoint_dtype(config) or torch.float32)


def plain_config(folder: Path) -> Any:
    """The config of a plain checkpoint folder that can stream (no custom code), or a
    one-line error."""
    from transformers import AutoConfig

    from compressor.models.integrity import CONFIG_ERRORS
    from compressor.safety.remote_code import remote_code_files
    if not (Path(folder) / "config.json").is_file():
        raise UserError(f"{folder}: no config.json; streaming loads a checkpoint folder "
                        "(config.json + safetensors)")
    if remote_code_files(Path(folder)):
        raise UserError(f"{folder} needs its own Python code (auto_map); streaming builds models "
                        "from transformers' own classes only: load it without --stream")
    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except (OSError, *CONFIG_ERRORS) as e:
        raise UserError(f"cannot read the model config in '{folder}': "
                        f"{' '.join(str(e).split())[:200]}") from None


def open_streamed(spec: str, dtype: str | torch.dtype, compute_device: torch.device
                  ) -> tuple[nn.Module, Any, dict[str, Any], ShardReader]:
    """MODEL for a streamed compress run: the meta skeleton in the compute dtype with
    everything outside the decoder layers read, its tokenizer, the report's model section
    (``load_model``'s ModelInfo) and the reader the layers come from."""
    from compressor.core.shards import check_layers_present, large_allocations_to_os
    from compressor.models import decoder_layers
    from compressor.models.device import checkpoint_dtype, resolve_dtype
    from compressor.models.load import ModelInfo, load_tokenizer
    from compressor.models.resolve import resolve_model
    res = resolve_model(spec)
    if res.gguf_file:
        raise UserError("--stream reads safetensors checkpoints; a .gguf model must be loaded "
                        "whole (convert it first: scripts/convert_gguf.py)")
    config = plain_config(res.path)
    torch_dtype = resolve_dtype(dtype, config, compute_device)
    tokenizer = load_tokenizer(res.path)
    large_allocations_to_os()
    reader = ShardReader(res.path)
    model = skeleton(config, torch_dtype)
    layers_path, layers = decoder_layers(model)
    check_layers_present(model, reader, layers_path)
    materialize_outside(model, reader, layers_path)
    cfg = getattr(config, "get_text_config", lambda: config)()
    own = checkpoint_dtype(config)
    info = ModelInfo(
        spec=spec, source=res.source, hub_id=res.hub_id, path=str(res.path), gguf_file=None,
        gguf_sha256=None, dtype=str(torch_dtype).removeprefix("torch."),
        device="meta (streamed)",
        architecture=(config.architectures or [type(model).__name__])[0],
        model_type=config.model_type, n_params=sum(p.numel() for p in model.parameters()),
        n_layers=len(layers), hidden_size=getattr(cfg, "hidden_size", None),
        checkpoint_dtype=str(own).removeprefix("torch.") if own else None)
    return model, tokenizer, info.to_dict(), reader
