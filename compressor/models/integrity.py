"""Header-level checks of weight files: a truncated download is caught with the file named, not
deep inside transformers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from compressor.errors import UserError
from compressor.safetensors_io import read_header


def _config_errors() -> tuple[type[BaseException], ...]:
    """What transformers raises for a config.json field of the wrong type or value (newer
    versions validate through huggingface_hub's strict dataclasses)."""
    found: list[type[BaseException]] = [TypeError, ValueError, KeyError]
    try:
        from huggingface_hub.errors import StrictDataclassError
        found.append(StrictDataclassError)
    except ImportError:
        pass
    return tuple(found)


CONFIG_ERRORS = _config_errors()


def check_weights(folder: Path) -> list[Path]:
    """Make sure ``folder`` holds complete safetensors weights; return the files.

    Reads only headers: a truncated download is caught here with the file named, instead of
    as an obscure error deep inside transformers.
    """
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise UserError(f"'{index}' is corrupt ({e}): download the checkpoint again") from e
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(f"checkpoint '{folder}' is incomplete: missing {', '.join(missing)} "
                            "listed in model.safetensors.index.json; download it again")
    else:
        # only the file transformers loads with use_safetensors=True counts: an unrelated
        # adapter_model.safetensors beside pytorch_model.bin must not let the pickle through
        files = [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else []
    if not files:
        pickles = sorted(p.name for p in folder.iterdir()
                         if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        if pickles:
            raise UserError(f"folder '{folder}' holds pickled weights ({pickles[0]}), which svdc "
                            "never loads (a pickle can run code): convert them to safetensors with "
                            "transformers' save_pretrained(..., safe_serialization=True)")
        raise UserError(f"folder '{folder}' has config.json but no weights "
                        "(model.safetensors or model.safetensors.index.json): copy the weights "
                        "in, or pass the Hub id")
    for f in files:
        check_safetensors_file(f)
    return files


def check_safetensors_file(path: Path) -> None:
    """Raise a UserError naming ``path`` if its header is unreadable or its data truncated."""
    fix = "delete it and download / save the checkpoint again"
    header, start = read_header(path, fix)
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                  default=0)
    except (TypeError, KeyError, ValueError, IndexError, AttributeError) as e:
        raise UserError(f"weights file '{path}' is corrupt (bad tensor table): {fix}") from e
    size = path.stat().st_size
    if start + end > size:
        raise UserError(f"weights file '{path}' is truncated: {size} bytes on disk, "
                        f"{start + end} expected: {fix}")


def check_gguf_magic(path: Path) -> None:
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UserError(f"'{path}' is not a GGUF file (bad magic bytes): download it again")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def check_loaded(model, loading: dict, path: Path) -> None:
    """Refuse a checkpoint transformers loaded only in part, before the first forward pass:
    a tensor the architecture expects that the files lack (transformers would fill it with
    random values), one of the wrong shape, or a weight that is not finite."""
    missing = sorted(loading.get("missing_keys") or [])
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(f"checkpoint '{path}' lacks {len(missing)} tensor(s) the architecture "
                        f"expects ({', '.join(missing[:3])}{more}): it is incomplete; download "
                        "it again")
    bad = loading.get("mismatched_keys") or []
    if bad:
        first = bad[0]
        raise UserError(f"checkpoint '{path}' has {len(bad)} tensor(s) of the wrong shape "
                        f"({first[0] if isinstance(first, (tuple, list)) else first}): it does "
                        "not match its config.json; download it again")
    import torch
    for name, p in model.named_parameters():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise UserError(f"checkpoint '{path}' holds NaN or Inf in {name}: the weights are "
                            "corrupt; download them again")


_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
          "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")


def check_config(path: Path, available_bytes: int | None = None) -> None:
    """Refuse an absurd ``path/config.json`` before transformers reads it (its own checks
    divide by zero or build a model of any size): sizes that are not positive integers, heads
    that do not divide the hidden size or the query heads, or a model
    whose 16-bit weights would not fit ``available_bytes``."""
    where = f"'{path}/config.json'"
    try:
        raw = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return   # absent (GGUF) or unreadable: AutoConfig names the problem
    if not isinstance(raw, dict):
        raise UserError(f"{where} is not a JSON object; download the checkpoint again")
    d = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else raw

    for key in _SIZES:
        v = d.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"{where}: {key} = {v!r} must be a positive integer; fix config.json "
                            "or download the checkpoint again")
    heads, kv = d.get("num_attention_heads"), d.get("num_key_value_heads")
    hidden = d.get("hidden_size")
    if heads and hidden and hidden % heads:
        raise UserError(f"{where}: hidden_size {hidden} is not divisible by num_attention_heads "
                        f"{heads}; fix config.json")
    if heads and kv and heads % kv:
        raise UserError(f"{where}: num_attention_heads {heads} is not divisible by "
                        f"num_key_value_heads {kv}; fix config.json")
    if available_bytes and hidden:
        inter = d.get("intermediate_size") or 4 * hidden
        layers = d.get("num_hidden_layers") or 1
        vocab = d.get("vocab_size") or 0
        params = layers * (4 * hidden * hidden + 3 * hidden * inter) + 2 * vocab * hidden
        if 2 * params > available_bytes:   # at least 16 bits a weight, before any work
            raise UserError(f"{where} describes about {params / 1e9:.3g} B parameters "
                            f"({2 * params / 2**30:.3g} GiB even in 16 bit), more than the "
                            f"{available_bytes / 2**30:.3g} GiB available: use --stream, or fix "
                            "config.json")
