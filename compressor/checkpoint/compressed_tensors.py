"""Export an svdc checkpoint to compressed-tensors ``pack-quantized`` (+ a PEFT LoRA adapter).

Why a converter and not a re-quantizer: svdc's codes, fp16 scales and zero points already
define the weight exactly; compressed-tensors (transformers, vLLM) can express the same
grid, so the export moves integers and scales between layouts and the loaded model computes
what svdc computes.

The mapping (svdc: ``w = (c - z)·s`` with codes ``c`` and zeros ``z`` in ``[0, 2**b)``, a
symmetric grid having ``z = 2**(b-1)``; compressed-tensors: ``w = (q - zp)·s`` with signed
``q`` and ``zp`` in ``[-2**(b-1), 2**(b-1))``, ``zp = 0`` when symmetric):

* ``q = c - 2**(b-1)`` and ``zp = z - 2**(b-1)``, so ``q - zp = c - z`` exactly.
* Packing stores ``q + 2**(b-1)`` (= svdc's unsigned code) as a dense little-endian bit
  stream, element ``i`` of a row at bits ``[i·b, (i+1)·b)`` of the row's int32 words
  (32 elements fill exactly ``b`` words, a row takes ``ceil(in·b/32)`` words). This is the
  layout of compressed-tensors >= 0.18; up to 0.17 each word held ``32 // b`` codes with the
  spare high bits empty, the same thing for 2, 4 and 8 bits but not for 3 (10 codes + 2
  spare bits per word). Hence the pin (``CT_SPEC``).
* Asymmetric zero points ``(out, groups)`` are packed the same way along the *output*
  dimension: ``(ceil(out·b/32), groups)`` int32.
* Scales are written as float32: they are float16 values (svdc rounds them before choosing
  codes), so float32 holds them exactly, and compressed-tensors dequantizes in the scale's
  dtype, where ``(q - zp)·s`` is then exact (at most 8 + 11 significant bits), as in svdc.

A compressed linear ``[quant]`` becomes a packed layer; ``[quant, low-rank]`` (EoRA,
LQ-LoRA with an integer base) becomes a packed base layer plus a LoRA module in
``adapter/``; a ``[dense]`` part stays a plain weight. Everything else has no
compressed-tensors form and is refused in one line naming the layers and the fix.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.atomic import atomic_dir
from compressor.checkpoint.export import split_lowrank_paths, write_lora_adapter
from compressor.checkpoint.load import load_compressed
from compressor.checkpoint.save import compressed_modules, write_weights
from compressor.errors import UserError
from compressor.parts.lowrank import DensePart
from compressor.parts.quantized import UniformQuantPart
from compressor.primitives.grids import group_len
from compressor.primitives.packing import pack_bits, unpack_bits

CT_SPEC = ">=0.18,<0.21"     # also in pyproject's [export] extra; see the module docstring
CT_MIN = (0, 18)
_INSTALL = "pip install 'svdc[export]'"
log = logging.getLogger("svdc")


def require_compressed_tensors():
    """The installed compressed-tensors module, or a UserError naming the extra."""
    try:
        import compressed_tensors
    except ImportError:
        raise UserError(f"--format compressed-tensors needs the compressed-tensors package "
                        f"({CT_SPEC}); install it with {_INSTALL}") from None
    ver = tuple(int(x) for x in re.findall(r"\d+", compressed_tensors.__version__)[:2])
    if ver < CT_MIN:
        raise UserError(f"compressed-tensors {compressed_tensors.__version__} packs 3-, 5-, 6- and 7-bit weights in the "
                        f"pre-0.18 layout; svdc supports {CT_SPEC}: {_INSTALL} --upgrade")
    return compressed_tensors


# --------------------------------------------------------------------------------------
# packing (pure tensor math)
# --------------------------------------------------------------------------------------
def pack_rows_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (rows, cols) row by row into int32 words (rows, ceil(cols·bits/32)):
    element i of a row at bits [i·bits, (i+1)·bits) of the row's little-endian bit stream.

    Padding each row to a multiple of 32 codes makes every row a whole number of 32-bit
    words, so svdc's own bit packer (little-endian over the flattened tensor) gives each
    row's bytes; four bytes are then assembled into a word arithmetically (host-endian free).
    """
    rows, cols = codes.shape
    padded = -(-cols // 32) * 32
    c = torch.zeros(rows, padded, dtype=torch.uint8, device=codes.device)
    c[:, :cols] = codes.to(torch.uint8)
    by = pack_bits(c, bits).view(rows, padded * bits // 32, 4).to(torch.int64)
    word = by[..., 0] | (by[..., 1] << 8) | (by[..., 2] << 16) | (by[..., 3] << 24)
    word = torch.where(word >= 2**31, word - 2**32, word)           # two's complement int32
    return word[:, : -(-cols * bits // 32)].to(torch.int32).contiguous()


def unpack_rows_int32(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of ``pack_rows_int32``: uint8 codes (rows, cols). Each row is padded to a
    multiple of ``bits`` words (32 whole codes) so the rows unpack as one stream."""
    rows, words = packed.shape
    padded = -(-words // bits) * bits
    w = torch.zeros(rows, padded, dtype=torch.int64, device=packed.device)
    w[:, :words] = packed.to(torch.int64) & 0xFFFFFFFF
    by = torch.stack([(w >> s) & 0xFF for s in (0, 8, 16, 24)], -1).to(torch.uint8)
    return unpack_bits(by.reshape(-1), bits, rows * padded * 32 // bits).view(rows, -1)[:, :cols]


def ct_tensors(part: UniformQuantPart) -> dict[str, torch.Tensor]:
    """compressed-tensors' ``weight_packed``/``weight_scale``/``weight_shape``
    (+ ``weight_zero_point`` when asymmetric) holding exactly ``part``'s weight."""
    q = part.to_quant()
    out = {"weight_packed": pack_rows_int32(q.codes, part.bits),
           "weight_scale": part.scale.float().contiguous(),
           "weight_shape": torch.tensor([part.out_features, part.in_features], dtype=torch.int64)}
    if not part.sym:
        out["weight_zero_point"] = pack_rows_int32(part.zero.t(), part.bits).t().contiguous()
    return out


def ct_dense(tensors: dict[str, torch.Tensor], bits: int, sym: bool) -> torch.Tensor:
    """float32 weight from compressed-tensors tensors, by the format's definition (for tests
    and for checking an export without compressed-tensors installed)."""
    out_f, in_f = (int(v) for v in tensors["weight_shape"])
    half = 2 ** (bits - 1)
    qv = unpack_rows_int32(tensors["weight_packed"], bits, in_f).float() - half
    scale = tensors["weight_scale"].float()
    if sym:
        zp = torch.zeros_like(scale)
    else:
        zp = unpack_rows_int32(tensors["weight_zero_point"].t().contiguous(), bits, out_f).t().float() - half
    gl = in_f // scale.shape[1]
    return ((qv.view(out_f, -1, gl) - zp[..., None]) * scale[..., None]).view(out_f, in_f)


# --------------------------------------------------------------------------------------
# what can be expressed
# --------------------------------------------------------------------------------------
def _compact(names: list[str], limit: int = 4) -> str:
    """``model.layers.{0-29}.mlp.down_proj``-style summary of many module names."""
    groups: dict[str, list[int]] = defaultdict(list)
    for n in names:
        m = re.search(r"\.(\d+)\.", n)
        if m:
            groups[n[:m.start(1)] + "{}" + n[m.end(1):]].append(int(m.group(1)))
        else:
            groups[n].append(-1)
    parts = []
    for pat, idx in groups.items():
        if idx == [-1]:
            parts.append(pat)
            continue
        idx = sorted(set(idx))
        runs, start = [], idx[0]
        for a, b in zip(idx, idx[1:] + [None]):
            if b != a + 1:
                runs.append(f"{start}" if start == a else f"{start}-{a}")
                start = b
        parts.append(pat.replace("{}", "{" + ",".join(runs) + "}"))
    more = f" and {len(parts) - limit} more" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


def _dividing_group(ins: list[int], group_size: int) -> int:
    """The largest power of two <= group_size dividing every in_features (at least 1)."""
    g = 1
    while g * 2 <= max(group_size, 1) and all(i % (g * 2) == 0 for i in ins):
        g *= 2
    return g


_FIXES = {
    "nf": "NormalFloat codes (LQ-LoRA) have no integer grid in compressed-tensors; use "
          "--format peft-adapter (dense base + adapter) or --format dense",
    "outliers": "GWQ's sparse 16-bit outliers have no compressed-tensors form; use --format dense, "
                "or compress with gptq/rtn instead",
    "lowrank": "a low-rank-only layer has no quantized base; use --format dense (or --format "
               "peft-adapter for EoRA over a pruned/SVD base)",
    "dictionary": "dictionary (CoSpaDi) parts have no compressed-tensors form; use --format dense",
    "channels": "channel-sparse (LOST) parts have no compressed-tensors form; use --format dense",
    "sparse": "sparse (pruned) parts have no compressed-tensors pack-quantized form; use --format dense",
}


def _classify(mod) -> tuple[str, Any]:
    """('quant', part) | ('dense', part) | (reason, None) for one compressed linear after its
    low-rank path was split off."""
    types = [p.type_name for p in mod.parts]
    if len(mod.parts) == 1 and isinstance(mod.parts[0], UniformQuantPart):
        return "quant", mod.parts[0]
    if len(mod.parts) == 1 and isinstance(mod.parts[0], DensePart):
        return "dense", mod.parts[0]
    if "nf" in types:
        return "nf", None
    if "quant" in types and "sparse" in types:
        return "outliers", None
    for t in ("dictionary", "channels", "lowrank", "qlowrank", "sparse"):
        if t in types:
            return ("lowrank" if t == "qlowrank" else t), None
    return "+".join(types), None


def plan(model: nn.Module) -> dict[str, tuple[str, Any]]:
    """Per compressed linear, what it becomes; raises one UserError line for what cannot be
    expressed (grouped by reason, naming the layers and the fix)."""
    out, bad = {}, defaultdict(list)
    ragged: dict[str, tuple[int, int]] = {}
    for name, mod in compressed_modules(model).items():
        kind, part = _classify(mod)
        if kind == "quant":
            gl = group_len(part.in_features, part.group_size)
            if part.in_features % gl:
                ragged[name] = (part.in_features, part.group_size)
                continue
        elif kind != "dense":
            bad[kind].append(name)
            continue
        out[name] = (kind, part)
    msgs = []
    if ragged:
        gs = max(g for _, g in ragged.values())
        ins = sorted({i for i, _ in ragged.values()})
        kinds = sorted({n.rsplit(".", 1)[-1] for n in ragged})
        msgs.append(f"{_compact(list(ragged))} have in_features {ins} not divisible by group size "
                    f"{gs} (a ragged last group); re-compress with --group-size "
                    f"{_dividing_group(ins, gs)}, or leave them dense with the recipe's "
                    f"targets: {{exclude: {kinds}}}")
    for kind, names in bad.items():
        fix = _FIXES.get(kind, f"parts [{kind}] have no compressed-tensors form; use --format dense")
        msgs.append(f"{_compact(names)}: {fix}")
    if msgs:
        raise UserError("cannot export to compressed-tensors: " + "; ".join(msgs))
    if not any(k == "quant" for k, _ in out.values()):
        raise UserError("nothing to export to compressed-tensors: no layer is group-wise integer "
                        "quantized (rtn, gptq, eora over them); use --format dense")
    return out


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------
def quantization_config(layers: dict[str, UniformQuantPart], ignore: list[str]) -> dict[str, Any]:
    """config.json's ``quantization_config``: one config group per (bits, grid, group size),
    targeting the layers by exact name, built with compressed-tensors' own (validating) models."""
    ct = require_compressed_tensors()
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
    )

    schemes: dict[tuple, list[str]] = defaultdict(list)
    for name, p in layers.items():
        gl = group_len(p.in_features, p.group_size)
        key = (p.bits, p.sym, None if gl == p.in_features else gl)
        schemes[key].append(name)
    groups = {}
    for i, ((bits, sym, gl), names) in enumerate(sorted(schemes.items(), key=lambda kv: str(kv[0]))):
        args = QuantizationArgs(num_bits=bits, type="int", symmetric=sym,
                                strategy="channel" if gl is None else "group", group_size=gl,
                                dynamic=False, actorder=None)
        groups[f"group_{i}"] = QuantizationScheme(targets=sorted(names), weights=args,
                                                  input_activations=None, output_activations=None)
    qc = QuantizationConfig(config_groups=groups, format="pack-quantized",
                            quantization_status="compressed", ignore=ignore)
    return {"version": ct.__version__, "quant_method": "compressed-tensors", "sparsity_config": {},
            "transform_config": {}, **qc.model_dump(mode="json", exclude={"quant_method"})}


def _plain_state(model: nn.Module, skip: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Tensors outside the compressed linears, each storage once (tied embeddings)."""
    seen, out = set(), {}
    for k, t in model.state_dict().items():
        if k.startswith(skip):
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out[k] = t.detach().cpu().contiguous()
    return out


def _write_ct_base(model: nn.Module, src: Path, folder: Path, layers: dict[str, tuple[str, Any]]) -> dict:
    comp = compressed_modules(model)
    tensors = _plain_state(model, tuple(n + "." for n in comp))
    quantized = {}
    for name, (kind, part) in layers.items():
        if kind == "quant":
            quantized[name] = part
            tensors.update({f"{name}.{k}": v for k, v in ct_tensors(part).items()})
        else:
            tensors[f"{name}.weight"] = part.weight.detach().cpu().contiguous()
        if comp[name].bias is not None:
            tensors[f"{name}.bias"] = comp[name].bias.detach().cpu().contiguous()
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    cfg = model.config.to_dict()
    cfg.pop("compression_config", None)
    cfg["quantization_config"] = quantization_config(quantized, ignore=sorted(linears))
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
    write_weights(folder, tensors, {"format": "pt"})
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")) \
                or f.name.endswith(".model"):
            shutil.copy2(f, folder / f.name)
    return cfg["quantization_config"]


_README = """# svdc compressed-tensors export

`{base}` is a compressed-tensors `pack-quantized` checkpoint (written for compressed-tensors
{spec}). It loads in plain transformers (with `pip install compressed-tensors`) and in vLLM.{adapter}

```python
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("{base}"){peft}
```
"""

_ADAPTER_NOTE = """
`adapter/` is a PEFT LoRA adapter (scaling 1: lora_alpha = r, rank_pattern for per-module
ranks) holding the low-rank compensation paths. It applies to `base/` only, not to the
original model: the paths compensate the base's quantization error.

    vllm serve base --enable-lora --lora-modules svdc=adapter --max-lora-rank {r}
"""


def export_compressed_tensors(src: str | Path, dst: str | Path, force: bool = False,
                              verify: bool = True) -> Path:
    """Write ``dst`` (compressed-tensors), or ``dst/base`` + ``dst/adapter`` when the model has
    low-rank paths (EoRA / LQ-LoRA); see the module docstring for the mapping."""
    require_compressed_tensors()
    src = Path(src)
    model = load_compressed(src, verify=verify)
    lora, ranks = split_lowrank_paths(model)
    layers = plan(model)
    dtype = next(model.parameters()).dtype
    quant_parts = [p for k, p in layers.values() if k == "quant"]
    if any(not p.sym for p in quant_parts):
        log.warning("asymmetric grid: load it in transformers with quantization_config="
                    "CompressedTensorsConfig(dequantize=True) (its default path cannot size packed zero "
                    "points); vLLM serves asymmetric zero points at 4 and 8 bits only")
    with atomic_dir(dst, force) as tmp:
        base = tmp / "base" if lora else tmp
        base.mkdir(exist_ok=True)
        _write_ct_base(model, src, base, layers)
        note, peft = "", ""
        if lora:
            write_lora_adapter(tmp / "adapter", lora, ranks, dtype)
            r = max(ranks.values())
            note = _ADAPTER_NOTE.format(r=max(8, 2 ** math.ceil(math.log2(r))))
            peft = "\nfrom peft import PeftModel\nmodel = PeftModel.from_pretrained(model, \"adapter\")"
        (tmp / "README.md").write_text(_README.format(base="base" if lora else ".", spec=CT_SPEC,
                                                      adapter=note, peft=peft))
    return Path(dst)
