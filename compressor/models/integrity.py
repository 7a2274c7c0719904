"""Checks of a checkpoint from a stranger, in the order loading needs them: weight-file headers
(safetensors tables here, GGUF headers in gguf_header.py), the config against those files, and after transformers
has loaded it, what it could not fill. Each failure is one UserError line naming the file and
the fix, instead of a struct error, a random fill or an obscure error deep inside
transformers."""

from __future__ import annotations

import hashlib
import json
import re
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


def check_safetensors_file(path: Path) -> int:
    """Raise a UserError naming ``path`` if its header is unreadable, a tensor's byte range
    does not match its dtype and shape, or its data is truncated; return the data bytes."""
    return _safetensors_table(path)[0]


def _safetensors_table(path: Path) -> tuple[int, list[str]]:
    from compressor.safetensors_io import WIDTH
    fix = "delete it and download / save the checkpoint again"
    header, start = read_header(path, fix)
    end = 0
    for name, v in header.items():
        if name == "__metadata__":
            continue
        try:
            lo, hi = (int(x) for x in v["data_offsets"])
            shape = [int(d) for d in v["shape"]]
            dtype = v["dtype"]
            if lo < 0 or hi < lo or any(d < 0 for d in shape):
                raise ValueError
        except (TypeError, KeyError, ValueError, AttributeError):
            raise UserError(f"weights file '{path}' is corrupt (bad tensor table entry "
                            f"{str(name)[:80]!r}): {fix}") from None
        numel = 1
        for d in shape:
            numel *= d
        if dtype in WIDTH and numel * WIDTH[dtype] != hi - lo:
            raise UserError(f"weights file '{path}' is corrupt: tensor {str(name)[:80]!r} "
                            f"({dtype}, shape {shape}) needs {numel * WIDTH[dtype]} bytes, its "
                            f"table gives it {hi - lo}: {fix}")
        end = max(end, hi)
    size = path.stat().st_size
    if start + end > size:
        raise UserError(f"weights file '{path}' is truncated: {size} bytes on disk, "
                        f"{start + end} expected: {fix}")
    return end, [k for k in header if k != "__metadata__"]


def weights_table(folder: Path) -> tuple[int, list[str]]:
    """The data bytes and tensor names of a folder's safetensors weights (headers only)."""
    total, names = 0, []
    for f in check_weights(folder):
        n, keys = _safetensors_table(f)
        total += n
        names += keys
    return total, names


_STACK = re.compile(r"^(.*?)(?:^|\.)layers\.(\d+)\.")
_GGUF_BLOCK = re.compile(r"^blk\.(\d+)\.")


def stored_layers(names: list[str], gguf: bool = False) -> int | None:
    """How many decoder layers the tensor names hold (highest index + 1), or None when that
    cannot be told: no layer stack, or several (a vision tower beside the text model)."""
    if gguf:
        found = [int(m.group(1)) for n in names if (m := _GGUF_BLOCK.match(n))]
        return max(found) + 1 if found else None
    stacks: dict[str, int] = {}
    for n in names:
        if m := _STACK.match(n):
            stacks[m.group(1)] = max(stacks.get(m.group(1), -1), int(m.group(2)))
    return next(iter(stacks.values())) + 1 if len(stacks) == 1 else None


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
    bad = sorted(loading.get("mismatched_keys") or [], key=str)   # a set in transformers 5
    if bad:
        first = bad[0]
        if isinstance(first, (tuple, list)) and len(first) == 3:
            what = (f"{first[0]}: {tuple(first[1])} in the file, {tuple(first[2])} from "
                    "the config")
        else:
            what = str(first[0] if isinstance(first, (tuple, list)) else first)
        raise UserError(f"checkpoint '{path}' has {len(bad)} tensor(s) of the wrong shape "
                        f"({what}): it does not match its config; download it again")
    _check_layer_count(model, loading.get("unexpected_keys") or [], path)
    import torch
    for name, p in model.named_parameters():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise UserError(f"checkpoint '{path}' holds NaN or Inf in {name}: the weights are "
                            "corrupt; download them again")


_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _check_layer_count(model, unexpected: list[str], path: Path) -> None:
    """A checkpoint with more decoder layers than its config.json says would load its first
    layers only (transformers drops the rest as "unexpected"): refuse it."""
    extra = sorted({int(m.group(1)) for k in unexpected if (m := _LAYER_INDEX.search(k))})
    if not extra:
        return
    cfg = getattr(model.config, "get_text_config", lambda: model.config)()
    n = getattr(cfg, "num_hidden_layers", None)
    raise UserError(f"checkpoint '{path}' holds tensors of decoder layer {extra[-1]} but its "
                    f"config.json says num_hidden_layers = {n}: the config does not match the "
                    "weights; fix config.json or download the checkpoint again")


_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
          "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")


def check_config(path: Path, available_bytes: int | None = None,
                 weights_bytes: int | None = None, layers_found: int | None = None) -> None:
    """Refuse an absurd ``path/config.json`` before transformers reads it (its own checks
    divide by zero or build a model of any size); see check_config_dict."""
    where = f"'{path}/config.json'"
    try:
        raw = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return   # absent (GGUF) or unreadable: AutoConfig names the problem
    if not isinstance(raw, dict):
        raise UserError(f"{where} is not a JSON object; download the checkpoint again")
    check_config_dict(raw, where, "fix config.json or download the checkpoint again",
                      available_bytes, weights_bytes, layers_found)


def check_config_dict(raw: dict, where: str, fix: str, available_bytes: int | None = None,
                      weights_bytes: int | None = None, layers_found: int | None = None) -> None:
    """Sizes that are not positive integers, a dtype torch does not have, heads that do not
    divide the hidden size or the query heads, a layer count other than the files hold
    (``layers_found``), a model whose 16-bit weights would not fit ``available_bytes``, or
    one far larger than its weight files (``weights_bytes``) are each refused in one line:
    transformers would build (and randomly fill) whatever the config says before the
    mismatch shows, which for a corrupted size takes minutes or all the memory."""
    d = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else raw

    for key in _SIZES:
        v = d.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"{where}: {key} = {v!r} must be a positive integer; {fix}")
    for key in ("dtype", "torch_dtype"):   # transformers does getattr(torch, value)
        v = d.get(key, raw.get(key))
        if v is not None and not _is_dtype_name(v):
            raise UserError(f"{where}: {key} = {v!r} is not a torch dtype name (float32, "
                            f"float16, bfloat16, ...); {fix}")
    heads, kv = d.get("num_attention_heads"), d.get("num_key_value_heads")
    hidden = d.get("hidden_size")
    if heads and hidden and hidden % heads:
        raise UserError(f"{where}: hidden_size {hidden} is not divisible by num_attention_heads "
                        f"{heads}; {fix}")
    if heads and kv and heads % kv:
        raise UserError(f"{where}: num_attention_heads {heads} is not divisible by "
                        f"num_key_value_heads {kv}; {fix}")
    params = None
    if hidden:
        inter = d.get("intermediate_size") or 4 * hidden
        vocab = d.get("vocab_size") or 0
        params = ((d.get("num_hidden_layers") or 1) * (4 * hidden * hidden + 3 * hidden * inter)
                  + 2 * vocab * hidden)
    said = ", ".join(f"{k} {d[k]}" for k in ("hidden_size", "intermediate_size", "vocab_size",
                                               "num_hidden_layers") if d.get(k) is not None)
    if params and available_bytes and 2 * params > available_bytes:  # >= 16 bits a weight
        raise UserError(f"{where} describes about {params / 1e9:.3g} B parameters ({said}) "
                        f"({2 * params / 2**30:.3g} GiB even in 16 bit), more than the "
                        f"{available_bytes / 2**30:.3g} GiB available: use --stream, or {fix}")
    n_layers = d.get("num_hidden_layers")
    extra = d.get("num_nextn_predict_layers")   # DeepSeek's MTP layers follow the stack
    extra = extra if isinstance(extra, int) and not isinstance(extra, bool) else 0
    if layers_found is not None and n_layers and not n_layers <= layers_found <= n_layers + extra:
        raise UserError(f"{where}: num_hidden_layers = {n_layers}, but the weight files hold "
                        f"{layers_found} decoder layers; {fix}")
    # the estimate is within 2x of the true count for dense decoders; 32x the files' bytes
    # at 16 bits (8x for 4-bit weights) plus 64 MiB leaves any real checkpoint through
    if params and weights_bytes is not None and 2 * params > 32 * weights_bytes + (64 << 20):
        raise UserError(f"{where} describes about {params / 1e9:.3g} B parameters ({said}), "
                        f"but the weight files hold only {weights_bytes / 2**20:.3g} MiB: a size in "
                        f"the config is wrong; {fix}")


def _is_dtype_name(value) -> bool:
    import torch
    return isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype)
