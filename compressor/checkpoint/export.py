"""Exports for tools that do not know svdc: a dense transformers checkpoint, or a dense base plus a PEFT LoRA adapter holding the low-rank paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from compressor.atomic import atomic_dir
from compressor.errors import UserError
from compressor.parts.lowrank import LowRankPart

from .load import load_compressed
from .save import compressed_modules


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
    # marks the folder as svdc's, so a later `--force` may replace it (see safety.outputs)
    model.config.svdc_export = {"source": tokenizer_src.name}
    model.save_pretrained(folder, safe_serialization=True)
    for f in tokenizer_src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")) or f.name.endswith(".model"):
            shutil.copy2(f, folder / f.name)


def export_dense(src: str | Path, dst: str | Path, force: bool = False, verify: bool = True) -> Path:
    """A plain checkpoint that vanilla ``AutoModelForCausalLM.from_pretrained`` loads."""
    src = Path(src)
    model = densify(load_compressed(src, verify=verify))
    with atomic_dir(dst, force) as tmp:
        _save_plain(model, src, tmp)
    return Path(dst)


def split_lowrank_paths(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Remove every compressed linear's low-rank path (EoRA / LQ-LoRA) from ``model`` in place
    and return it as PEFT LoRA tensors (float32, keyed as PEFT names them) and per-module ranks."""
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
    return lora, ranks


def write_lora_adapter(folder: Path, lora: dict[str, torch.Tensor], ranks: dict[str, int],
                       dtype: torch.dtype) -> None:
    """A PEFT LoRA adapter folder with scaling 1 (lora_alpha = r; rank_pattern and
    alpha_pattern for the modules whose rank differs from the largest)."""
    r = max(ranks.values())
    kinds = sorted({n.rsplit(".", 1)[-1] for n in ranks})
    folder.mkdir()
    save_file({k: v.to(dtype) for k, v in lora.items()}, str(folder / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": r,
           "target_modules": kinds, "rank_pattern": {n: k for n, k in ranks.items() if k != r},
           "alpha_pattern": {n: k for n, k in ranks.items() if k != r},
           "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
           "base_model_name_or_path": "../base", "init_lora_weights": True}
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2))


def export_peft_adapter(src: str | Path, dst: str | Path, force: bool = False,
                        verify: bool = True) -> Path:
    """Split the low-rank paths (EoRA / LQ-LoRA) into a PEFT LoRA adapter over a dense base.

    ``dst/base`` is the model with every low-rank path removed (the quantized/pruned base,
    dequantized); ``dst/adapter`` is a LoRA adapter (scaling 1) that restores the paths.
    """
    src = Path(src)
    model = load_compressed(src, verify=verify)
    lora, ranks = split_lowrank_paths(model)
    if not lora:
        raise UserError(f"{src} has no low-rank compensation paths to export; "
                        f"use a method with one (eora, lqlora) or --format dense")
    dtype = next(model.parameters()).dtype
    densify(model)
    with atomic_dir(dst, force) as tmp:
        (tmp / "base").mkdir()
        _save_plain(model, src, tmp / "base")
        write_lora_adapter(tmp / "adapter", lora, ranks, dtype)
        (tmp / "README.md").write_text(
            "# svdc PEFT export\n\n`adapter/` is a LoRA adapter (scaling 1: lora_alpha = r) that applies to the\n"
            "model in `base/`: the compressed model with its low-rank paths removed, with the\n"
            "quantized/pruned weights dequantized to dense. It does NOT apply to the original\n"
            "uncompressed model: the paths compensate the base's compression error.\n\n"
            "```python\nfrom transformers import AutoModelForCausalLM\nfrom peft import PeftModel\n"
            "base = AutoModelForCausalLM.from_pretrained('base')\nmodel = PeftModel.from_pretrained(base, 'adapter')\n```\n")
    return Path(dst)
