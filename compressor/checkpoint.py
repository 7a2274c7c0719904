"""Save and load compressed checkpoints (safetensors only), and export them.

Layout: a normal Hugging Face folder. ``config.json`` carries a ``compression_config``
section mapping each replaced module to its parts' spec; ``model.safetensors`` (sharded
when large) holds every tensor, the compressed parts' buffers included. Loading rebuilds
the modules from the specs and checks every key: nothing is silently random-initialized.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_dir
from .errors import UserError
from .modules import CompressedLinear
from .modules.lowrank import LowRankPart

FORMAT = "svdc"
FORMAT_VERSION = 1
SHARD_BYTES = 4 * 1024**3
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


def compressed_modules(model: nn.Module) -> dict[str, CompressedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, CompressedLinear)}


def compression_config(model: nn.Module, dtype: torch.dtype,
                       extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"format": FORMAT, "version": FORMAT_VERSION, "dtype": str(dtype).removeprefix("torch."),
            "modules": {n: m.spec() for n, m in compressed_modules(model).items()}, **(extra or {})}


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


def _unique_state(model: nn.Module, dtype: torch.dtype
                  ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict without aliases (tied embeddings): safetensors stores a tensor once.
    Uncompressed floating tensors are written in ``dtype``."""
    cast = {k for k, _ in _uncompressed_float(model)}
    seen: dict[tuple, str] = {}
    out, aliases = {}, {}
    for k, t in model.state_dict().items():
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
                    extra_config: dict[str, Any] | None = None) -> dict[str, int]:
    """Write config, weights and tokenizer into ``folder`` (already a temporary folder).
    ``dtype``: the storage dtype of the uncompressed tensors (default: the model's)."""
    dtype = dtype or next(model.parameters()).dtype
    tensors, aliases = _unique_state(model, dtype)
    cfg = model.config.to_dict()
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    cfg.pop("torch_dtype", None)
    cfg["compression_config"] = compression_config(model, dtype, {"tied_aliases": aliases,
                                                                  **(extra_config or {})})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
    # one metadata key only: safetensors writes its metadata map in hash order, so two keys
    # would make identical runs differ byte-wise
    files = write_weights(folder, tensors, {"format": "pt"})
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:
        gen_cfg.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return {"files": len(files), "bytes": sum((folder / f).stat().st_size for f in files)}


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


def densify(model: nn.Module) -> nn.Module:
    """Replace every compressed linear by an nn.Linear holding its materialized weight."""
    for name, mod in compressed_modules(model).items():
        dtype = mod.parts[0].state_dict()[next(iter(mod.parts[0].state_dict()))].dtype
        dtype = dtype if dtype.is_floating_point else next(model.parameters()).dtype
        lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(mod.dense_weight().to(dtype))
            if mod.bias is not None:
                lin.bias.copy_(mod.bias)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, lin)
    return model


def _save_plain(model: nn.Module, tokenizer_src: Path, folder: Path) -> None:
    if hasattr(model.config, "compression_config"):
        del model.config.compression_config
    model.save_pretrained(folder, safe_serialization=True)
    for f in tokenizer_src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")) or f.name.endswith(".model"):
            shutil.copy2(f, folder / f.name)


def export_dense(src: str | Path, dst: str | Path, force: bool = False) -> Path:
    """A plain checkpoint that vanilla ``AutoModelForCausalLM.from_pretrained`` loads."""
    src = Path(src)
    model = densify(load_compressed(src))
    with atomic_dir(dst, force) as tmp:
        _save_plain(model, src, tmp)
    return Path(dst)


def export_peft_adapter(src: str | Path, dst: str | Path, force: bool = False) -> Path:
    """Split the low-rank paths (EoRA / LQ-LoRA) into a PEFT LoRA adapter over a dense base.

    ``dst/base`` is the model with every low-rank path removed (the quantized/pruned base,
    dequantized); ``dst/adapter`` is a LoRA adapter (scaling 1) that restores the paths.
    """
    src = Path(src)
    model = load_compressed(src)
    lora: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for name, mod in compressed_modules(model).items():
        lowrank = [p for p in mod.parts[1:] if isinstance(p, LowRankPart) or p.type_name == "qlowrank"]
        if not lowrank:
            continue
        if len(lowrank) > 1:
            raise UserError(f"{name} has {len(lowrank)} low-rank paths; a LoRA adapter holds one")
        part = lowrank[0]
        A, B = (part.A.float(), part.B.float()) if isinstance(part, LowRankPart) else part.factors()
        lora[f"base_model.model.{name}.lora_A.weight"] = A.contiguous()
        lora[f"base_model.model.{name}.lora_B.weight"] = B.contiguous()
        ranks[name] = A.shape[0]
        mod.parts = nn.ModuleList([p for p in mod.parts if p is not part])
    if not lora:
        raise UserError(f"{src} has no low-rank compensation paths to export; "
                        f"use a method with one (eora, lqlora) or --format dense")
    dtype = next(model.parameters()).dtype
    densify(model)
    r = max(ranks.values())
    kinds = sorted({n.rsplit(".", 1)[-1] for n in ranks})
    with atomic_dir(dst, force) as tmp:
        (tmp / "base").mkdir()
        _save_plain(model, src, tmp / "base")
        (tmp / "adapter").mkdir()
        save_file({k: v.to(dtype) for k, v in lora.items()}, str(tmp / "adapter" / "adapter_model.safetensors"))
        cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": r,
               "target_modules": kinds, "rank_pattern": {n: k for n, k in ranks.items() if k != r},
               "alpha_pattern": {n: k for n, k in ranks.items() if k != r},
               "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
               "base_model_name_or_path": "../base", "init_lora_weights": True}
        (tmp / "adapter" / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
        (tmp / "README.md").write_text(
            "# svdc PEFT export\n\n`adapter/` is a LoRA adapter (scaling 1: lora_alpha = r) that applies to the\n"
            "model in `base/`: the compressed model with its low-rank paths removed, with the\n"
            "quantized/pruned weights dequantized to dense. It does NOT apply to the original\n"
            "uncompressed model: the paths compensate the base's compression error.\n\n"
            "```python\nfrom transformers import AutoModelForCausalLM\nfrom peft import PeftModel\n"
            "base = AutoModelForCausalLM.from_pretrained('base')\nmodel = PeftModel.from_pretrained(base, 'adapter')\n```\n")
    return Path(dst)
