"""A safetensors checkpoint read into a meta-device skeleton one module at a time, and the
memory given back after: what lets a model larger than RAM be compressed (streaming.py) or
evaluated (checkpoint/stream_load.py) one decoder layer at a time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from compressor.errors import UserError


class ShardReader:
    """Where each tensor of a safetensors checkpoint lives; reads tensors by name or prefix.

    Each read opens the shard and closes it afterwards, so no mapping of a shard stays resident.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            self.where = dict(json.loads(index.read_text())["weight_map"])
        else:
            single = self.folder / "model.safetensors"
            if not single.is_file():
                raise UserError(f"{self.folder}: streaming reads safetensors checkpoints "
                                "(model.safetensors or an index); convert this model first")
            with safe_open(str(single), framework="pt") as f:
                self.where = {k: "model.safetensors" for k in f.keys()}

    @classmethod
    def of_files(cls, folder: Path, files: list[str]) -> "ShardReader":
        """A reader over these safetensors files of ``folder`` (no index needed)."""
        self = cls.__new__(cls)
        self.folder, self.where = Path(folder), {}
        for name in files:
            with safe_open(str(self.folder / name), framework="pt") as f:
                self.where.update({k: name for k in f.keys()})
        return self

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Each tensor copied into its own memory, the shard opened (mapped) for that tensor
        alone: the mapped pages of the tensors read before are not resident beside the copy."""
        out = {}
        for n in names:
            with safe_open(str(self.folder / self.where[n]), framework="pt") as f:
                t = f.get_tensor(n).clone()
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                # a streamed read is the checkpoint's first use: the in-memory loader's
                # finiteness check (models/integrity.check_loaded), tensor by tensor
                raise UserError(f"checkpoint tensor {n} ({self.folder / self.where[n]}) holds "
                                f"NaN or Inf: the checkpoint is corrupt; re-create or download "
                                f"it again")
            out[n] = t
        return out

    def with_prefix(self, prefix: str) -> list[str]:
        return [k for k in self.where if k.startswith(prefix)]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape from the files' headers (no tensor data is read)."""
        from compressor.safetensors_io import read_header
        out: dict[str, tuple[int, ...]] = {}
        for name in sorted(set(self.where.values())):
            header, _ = read_header(self.folder / name, "re-create or download it again")
            out.update({k: tuple(v["shape"]) for k, v in header.items()
                        if k != "__metadata__" and isinstance(v, dict) and "shape" in v})
        return out


def check_layers_present(model: nn.Module, reader: ShardReader, layers_path: str,
                         aliases: dict[str, str] | None = None) -> None:
    """Before a streamed pass reads its first layer: every tensor of every decoder layer is in
    the checkpoint with the skeleton's shape (headers only), so a missing or wrong-shaped
    tensor of layer 20 is refused now, not after 19 layers of work."""
    prefix, aliases = layers_path + ".", aliases or {}
    shapes = reader.shapes()
    for name, t in model.state_dict().items():
        if not name.startswith(prefix) or not t.is_meta:
            continue
        src = aliases.get(name, name)
        if src not in shapes:
            raise UserError(f"the checkpoint lacks {name} ({reader.folder}): not a complete "
                            f"model; re-create or download it again")
        if shapes[src] != tuple(t.shape):
            raise UserError(f"checkpoint tensor {src} has shape {list(shapes[src])}, the model "
                            f"config expects {list(t.shape)} ({reader.folder}): the checkpoint "
                            f"is corrupt or from another model")


def skeleton(config: Any, dtype: torch.dtype) -> nn.Module:
    """The model with every parameter on the meta device (no memory) and real buffers."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    model.eval()
    return model


def place(model: nn.Module, name: str, value: torch.Tensor, device: torch.device | str) -> None:
    """Put ``value`` in the skeleton's tensor ``name`` on ``device``, cast to that tensor's
    dtype (as ``load_state_dict`` does: float16 quantization scales stay float16)."""
    from accelerate.utils import set_module_tensor_to_device
    try:
        set_module_tensor_to_device(model, name, device, value=value)
    except (ValueError, AttributeError) as e:
        raise UserError(f"checkpoint tensor {name} does not fit the model "
                        f"({' '.join(str(e).split())[:200]}); the checkpoint is corrupt or from "
                        "another model") from None


def read_into(model: nn.Module, reader: ShardReader, names: list[str],
              device: torch.device | str, aliases: dict[str, str] | None = None) -> None:
    """Read ``names`` (an alias reads its source tensor) into the skeleton on ``device``."""
    aliases = aliases or {}
    src = {n: aliases.get(n, n) for n in names}
    tensors = reader.read(sorted(set(src.values())))
    for n, s in src.items():
        place(model, n, tensors[s], device)


def load_module(model: nn.Module, reader: ShardReader, prefix: str, module: nn.Module,
                device: torch.device | str, aliases: dict[str, str] | None = None) -> None:
    """Read the checkpoint's tensors under ``prefix`` (module ``module`` of ``model``) onto
    ``device``; a tensor of the module that stays unread is a one-line error."""
    aliases = {k: v for k, v in (aliases or {}).items() if k.startswith(prefix)}
    read_into(model, reader, reader.with_prefix(prefix) + list(aliases), device, aliases)
    left = [k for k, t in module.state_dict().items() if t.is_meta]
    if left:
        raise UserError(f"the checkpoint lacks {prefix}{left[0]}: not a complete model")


def materialize_outside(model: nn.Module, reader: ShardReader, layers_path: str,
                        aliases: dict[str, str] | None = None) -> None:
    """Read every parameter and stored buffer outside the decoder layers (embeddings, norms,
    head) onto the CPU; tied weights are tied, not read twice."""
    prefix = layers_path + "."
    aliases = aliases or {}
    names = [n for n, t in model.state_dict().items() if not n.startswith(prefix) and t.is_meta]
    read_into(model, reader, [n for n in names if n in reader.where or n in aliases], "cpu",
              aliases)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    still = [n for n, t in model.state_dict().items() if not n.startswith(prefix) and t.is_meta]
    if still:
        raise UserError(f"the checkpoint lacks {still[:3]}: not a complete model")


def is_resident(module: nn.Module) -> bool:
    """Whether every stored tensor of ``module`` holds data (none left on the meta device)."""
    return not any(t.is_meta for t in module.state_dict().values())


def free_module(module: nn.Module) -> None:
    """Return ``module``'s parameters and stored buffers to the meta device (freeing their
    memory) and hand the freed heap back to the OS. Non-persistent buffers (rotary tables)
    stay: the checkpoint does not hold them, so the next read could not restore them."""
    with torch.no_grad():
        for mod in module.modules():
            for name, p in mod._parameters.items():
                if p is not None and not p.is_meta:
                    mod._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)
            for name, b in mod._buffers.items():
                if b is not None and not b.is_meta and name not in mod._non_persistent_buffers_set:
                    mod._buffers[name] = b.to("meta")
    trim_heap()


def large_allocations_to_os(threshold: int = 1 << 20) -> None:
    """Give every allocation of ``threshold`` bytes or more its own pages from the OS, returned
    when freed (glibc ``M_MMAP_THRESHOLD``; fixing it also stops glibc raising it to 32 MB).
    Without it, the freed weights and scratch of matrices under 32 MB stay in the heap and a
    streamed compression peaks ~100 MB above what is live over a 47 MB layer (BENCHMARKS.md).
    Costs page faults: +20% CPU (system time) for RTN on such small matrices; larger ones
    are mmapped by glibc anyway. Not set for evaluation, whose forwards allocate the same
    dequantized weights again and again (+35% CPU for a 7% lower peak, measured)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-3, int(threshold))   # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, and the resident size
    creeps up by a few freed layers' worth)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
