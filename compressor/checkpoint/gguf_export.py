"""`svdc export --format gguf`: a llama.cpp GGUF of an svdc output, its codes converted.

RTN/GPTQ layers whose grid a ggml block type holds (gguf_blocks.py) are written in that type
with svdc's own codes and scales, so llama.cpp runs GPTQ's choices at Q4_0/Q8_0/Q4_1 cost.
Every other tensor keeps its dtype (F32/F16/BF16). What GGUF cannot hold (other group sizes,
2/3 bits, outliers, dictionaries, channels, low-rank-only layers, NF codes) is refused in one
line naming the layers and the fix. EoRA / LQ-LoRA low-rank paths go in a llama.cpp LoRA
adapter GGUF beside the base (``FILE.lora.gguf``, alpha = r: scaling 1).

Llama-family models only (model_type llama / mistral, the architecture llama.cpp calls
``llama``): llama.cpp's rotary layout wants q/k rows permuted per head, as its own converter
does; whole rows move, so 32-wide blocks stay intact.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compressor.errors import UserError
from compressor.parts.lowrank import DensePart

from .compressed_tensors import _classify, _compact, _plain_state
from .export import split_lowrank_paths
from .gguf_blocks import gguf_type_for, q41_rounding, to_blocks
from .load import load_compressed
from .save import compressed_modules

log = logging.getLogger("svdc.export")

ARCHS = {"llama": "llama", "mistral": "llama"}
_FIX = ("re-compress with --method gptq (or rtn) --group-size 32 and --bits 4 or 8 (--sym for "
        "Q4_0/Q8_0), or use --format dense / compressed-tensors")
_FILE_TYPE = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7}   # llama.cpp's MOSTLY_* for the dominant type


def _permute_rows(n_rows: int, n_head: int) -> torch.Tensor:
    """Row order llama.cpp wants for a q/k projection of ``n_head`` heads: within each head,
    the HF halves (rotate_half) interleaved into pairs."""
    idx = torch.arange(n_rows)
    return idx.reshape(n_head, 2, n_rows // n_head // 2).transpose(1, 2).reshape(-1)


def _row_order(name: str, rows: int, cfg) -> torch.Tensor | None:
    if name.endswith("q_proj"):
        return _permute_rows(rows, cfg.num_attention_heads)
    if name.endswith("k_proj"):
        return _permute_rows(rows, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    return None


def plan_gguf(model: nn.Module) -> dict[str, tuple[str, object]]:
    """Per compressed linear: (ggml type, part); one UserError line for what GGUF cannot hold."""
    out, bad = {}, {}
    for name, mod in compressed_modules(model).items():
        kind, part = _classify(mod)
        if kind == "quant":
            q = part.to_quant()
            t = gguf_type_for(q)
            if t is None:
                bad.setdefault(f"{q.bits}-bit {'sym' if q.sym else 'asym'} group "
                               f"{q.group_size} (ggml blocks are 32 wide, 4/8 bit)", []).append(name)
                continue
            out[name] = (t, q)
        elif kind == "dense":
            out[name] = ("dense", part)
        else:
            bad.setdefault({"nf": "NormalFloat codes", "outliers": "sparse 16-bit outliers",
                            "lowrank": "low-rank-only"}.get(kind, f"{kind} parts"), []).append(name)
    if bad:
        what = "; ".join(f"{_compact(n)}: {why}" for why, n in bad.items())
        raise UserError(f"cannot export to GGUF: {what}; {_FIX}")
    return out


def check_gguf_output(p: Path, src: Path, force: bool) -> None:
    """A .gguf file path outside SRC; never a link; replaced only with --force and only when
    it already is a GGUF file (never some other file of the user's)."""
    if p.suffix != ".gguf":
        raise UserError(f"-o {p}: a GGUF export is one file; name it FILE.gguf")
    if p.is_symlink():
        raise UserError(f"-o {p} is a symbolic link; svdc never writes through a link: choose another -o")
    if p.resolve().is_relative_to(src.resolve()):
        raise UserError(f"-o {p} is inside the source folder {src}; choose another -o")
    if p.exists():
        if not force:
            raise UserError(f"{p} exists; pass --force to replace it or choose another -o")
        if not p.is_file() or p.open("rb").read(4) != b"GGUF":
            raise UserError(f"{p} exists and is not a GGUF file; --force replaces only GGUF "
                                "files: choose another -o")
    p.parent.mkdir(parents=True, exist_ok=True)


def _metadata(w, cfg, n_layers: int) -> None:
    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise UserError(f"cannot export to GGUF: rope scaling {rope} is not written by svdc's "
                        "GGUF writer yet; use --format dense and llama.cpp's converter")
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)


def _pre_tokenizer(tj: dict) -> str:
    """llama.cpp's name for the tokenizer's split rule (``tokenizer.ggml.pre``, matched by
    llama-vocab.cpp; an unknown name is refused at load); refuse a rule it would get wrong."""
    pre = tj.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"              # the GPT-2 split regex alone
    parts = pre.get("pretokenizers") or []
    if pre.get("type") == "Sequence" and len(parts) == 2 \
            and parts[0].get("type") == "Digits" and parts[0].get("individual_digits") \
            and parts[1].get("type") == "ByteLevel" and parts[1].get("use_regex", True):
        return "smollm"             # each digit apart, then the GPT-2 regex
    raise UserError(f"cannot export to GGUF: pre-tokenizer {json.dumps(pre)[:80]} has no "
                    "llama.cpp name svdc knows; use --format dense and llama.cpp's converter")


def _tokenizer(w, src: Path, cfg) -> None:
    """A byte-level BPE vocabulary (tokens by id, types, merges, special ids) from
    tokenizer.json, as llama.cpp's `gpt2` tokenizer model and transformers' GGUF loader read it."""
    tjf = src / "tokenizer.json"
    if not tjf.is_file():
        raise UserError(f"cannot export to GGUF: {src} has no tokenizer.json (a byte-level BPE "
                        "tokenizer is needed); use --format dense")
    tj = json.loads(tjf.read_text())
    if (tj.get("model") or {}).get("type") != "BPE":
        raise UserError("cannot export to GGUF: only byte-level BPE tokenizers are written; "
                        "use --format dense and llama.cpp's converter")
    vocab = dict(tj["model"]["vocab"])
    special = {}
    for a in tj.get("added_tokens", []):
        vocab[a["content"]] = a["id"]
        special[a["id"]] = a.get("special", True)
    n = max(cfg.vocab_size, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [5] * n                                   # UNUSED until filled
    for tok, i in vocab.items():
        tokens[i] = tok
        types[i] = 1
    for i, sp in special.items():
        types[i] = 3 if sp else 4                     # CONTROL / USER_DEFINED
    merges = [" ".join(m) if isinstance(m, list) else m for m in tj["model"].get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(_pre_tokenizer(tj))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    tc = json.loads((src / "tokenizer_config.json").read_text()) \
        if (src / "tokenizer_config.json").is_file() else {}
    ids = {"bos": cfg.bos_token_id, "eos": cfg.eos_token_id,
           "pad": getattr(cfg, "pad_token_id", None)}
    for k, v in ids.items():
        v = v[0] if isinstance(v, list) else v
        if isinstance(v, int) and 0 <= v < n:
            getattr(w, f"add_{k}_token_id")(v)
    w.add_add_bos_token(bool(tc.get("add_bos_token", False)))
    tmpl = src / "chat_template.jinja"
    if tmpl.is_file():
        w.add_chat_template(tmpl.read_text())
    elif isinstance(tc.get("chat_template"), str):
        w.add_chat_template(tc["chat_template"])


def provenance(src: Path) -> dict[str, str]:
    """What the GGUF says of its origin: svdc, the methods of the recipe, its digest."""
    import yaml
    cc = json.loads((src / "config.json").read_text()).get("compression_config") or {}
    methods = []
    if (src / "recipe.yaml").is_file():
        stages = (yaml.safe_load((src / "recipe.yaml").read_text()) or {}).get("stages") or []
        methods = [st.get("method", "?") for st in stages if isinstance(st, dict)]
    from compressor import __version__
    return {"version": __version__, "source": src.name, "methods": "+".join(methods) or "unknown",
            "recipe_fingerprint": str(cc.get("recipe_fingerprint", "")),
            "conversion": "svdc codes and fp16 scales as ggml blocks, not re-rounded"}


def _float_array(t: torch.Tensor) -> tuple[np.ndarray, object]:
    """A kept tensor in its own dtype (bf16 travels as raw uint16 with raw_dtype BF16), except
    1-D tensors (norms, biases): F32, an exact upcast, as llama.cpp's converter writes them;
    its CPU backend aborts on a BF16 norm."""
    import gguf
    t = t.detach().cpu().contiguous()
    if t.dim() == 1:
        return t.float().numpy(), None
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy(), gguf.GGMLQuantizationType.BF16
    if t.dtype == torch.float16:
        return t.numpy(), None
    return t.float().numpy(), None


def _gguf_name(names, hf: str) -> str:
    base, _, suffix = hf.rpartition(".")
    mapped = names.get_name(base)
    if mapped is None:
        raise UserError(f"cannot export to GGUF: no llama.cpp name for tensor {hf}; use --format dense")
    return f"{mapped}.{suffix}"


def _write(w, path: Path) -> None:
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def export_gguf(src: str | Path, dst: str | Path, force: bool = False, verify: bool = True) -> Path:
    """Write ``dst`` (a .gguf file) and, when the model has low-rank paths, ``dst``'s
    ``.lora.gguf`` sibling; both written to temporary names and renamed at the end."""
    import gguf
    src, dst = Path(src), Path(dst)
    model = load_compressed(src, verify=verify)
    cfg = model.config
    arch = ARCHS.get(cfg.model_type)
    if arch is None:
        raise UserError(f"cannot export to GGUF: model_type {cfg.model_type!r} is not written by "
                        f"svdc's GGUF writer (it writes {', '.join(sorted(ARCHS))}); use --format dense")
    lora, ranks = split_lowrank_paths(model)
    layers = plan_gguf(model)
    n_layers = cfg.num_hidden_layers
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    lora_dst = dst.with_suffix(".lora.gguf")
    for p in ([dst, lora_dst] if lora else [dst]):
        check_gguf_output(p, src, force)
    w = gguf.GGUFWriter(None, arch)
    w.add_name(src.name)
    _metadata(w, cfg, n_layers)
    _tokenizer(w, src, cfg)
    comp = compressed_modules(model)
    types: dict[str, int] = {}
    # each storage once: a tied head is left out, llama.cpp reuses token_embd
    for k, t in _plain_state(model, tuple(n + "." for n in comp)).items():
        if not torch.isfinite(t.float()).all():
            raise UserError(f"cannot export to GGUF: {k} holds NaN/Inf; the source is corrupt")
        arr, raw = _float_array(t)
        w.add_tensor(_gguf_name(names, k), arr, raw_dtype=raw)
    worst = 0.0
    for name, (kind, obj) in layers.items():
        mod = comp[name]
        order = _row_order(name, mod.out_features, cfg)
        if kind == "dense":
            weight = obj.weight if isinstance(obj, DensePart) else obj.dense()
            arr, raw = _float_array(weight if order is None else weight[order])
            w.add_tensor(_gguf_name(names, name + ".weight"), arr, raw_dtype=raw)
        else:
            if kind == "Q4_1":
                worst = max(worst, q41_rounding(obj))
            blocks = to_blocks(obj, kind)
            if order is not None:
                blocks = blocks[order.numpy()]
            w.add_tensor(_gguf_name(names, name + ".weight"), blocks,
                         raw_dtype=getattr(gguf.GGMLQuantizationType, kind))
            types[kind] = types.get(kind, 0) + 1
        if mod.bias is not None:
            b = mod.bias if order is None else mod.bias[order]
            w.add_tensor(_gguf_name(names, name + ".bias"), b.detach().float().numpy())
    if types:
        w.add_file_type(_FILE_TYPE[max(types, key=types.get)])
    if worst:
        log.warning("Q4_1: the fp16 offset m = -d*z rounds by up to %.3g on some blocks", worst)
        w.add_float32("svdc.q4_1_offset_rounding", worst)
    for k, v in provenance(src).items():
        w.add_string(f"svdc.{k}", v)
    tmp = dst.with_name(f".{dst.name}.tmp")
    written = [(tmp, dst)]
    _write(w, tmp)
    if lora:
        ltmp = lora_dst.with_name(f".{lora_dst.name}.tmp")
        _write_lora(ltmp, arch, names, lora, ranks, cfg, src.name)
        written.append((ltmp, lora_dst))
    for t, final in written:
        os.replace(t, final)
    return dst


def _write_lora(path: Path, arch: str, names, lora: dict, ranks: dict, cfg, base: str) -> None:
    """llama.cpp's LoRA adapter GGUF: ``<tensor>.lora_a`` (r, in) and ``.lora_b`` (out, r)
    per module, scaling alpha / r = 1 (alpha = r, one rank per file: the largest, zero-padded)."""
    import gguf
    r = max(ranks.values())
    w = gguf.GGUFWriter(None, arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(r))
    w.add_string("svdc.base", base)
    for name in ranks:
        A = lora[f"base_model.model.{name}.lora_A.weight"].float()
        B = lora[f"base_model.model.{name}.lora_B.weight"].float()
        if A.shape[0] < r:   # pad to the file's rank: zero rows/cols add nothing
            A = torch.cat([A, A.new_zeros(r - A.shape[0], A.shape[1])])
            B = torch.cat([B, B.new_zeros(B.shape[0], r - B.shape[1])], dim=1)
        order = _row_order(name, B.shape[0], cfg)
        if order is not None:
            B = B[order]
        g = _gguf_name(names, name + ".weight")
        w.add_tensor(g + ".lora_a", A.contiguous().numpy())
        w.add_tensor(g + ".lora_b", B.contiguous().numpy())
    _write(w, path)
