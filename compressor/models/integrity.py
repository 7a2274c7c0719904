"""Checks of a checkpoint from a stranger, in the order loading needs them: weight-file headers
(safetensors tables, GGUF headers), the config against those files, and after transformers
has loaded it, what it could not fill. Each failure is one UserError line naming the file and
the fix, instead of a struct error, a random fill or an obscure error deep inside
transformers."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import NamedTuple

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


GGUF_VERSIONS = (2, 3)          # what transformers' GGUF reader takes
GGUF_MAX_DIMS = 4               # GGML_MAX_DIMS: the spec's bound on a tensor's dimensions
GGUF_MAX_NESTING = 4            # arrays of arrays: none in practice; bounded, not recursive
_GGUF_SCALAR = {0: 1, 1: 1, 7: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_INTS, _GGUF_SIGNED = {0, 1, 2, 3, 4, 5, 10, 11}, {1, 3, 5, 11}
_GGUF_MIN_KV = 8 + 4 + 1        # key length, value type, the smallest value
_GGUF_MIN_TENSOR = 8 + 4 + 4 + 8  # name length, dimension count, type, offset


class _GgufCorrupt(Exception):
    """Why a GGUF header cannot be what it claims (becomes the UserError's reason)."""


class _Cursor:
    """Reads a GGUF header from a memory map, refusing any read past the end of the file."""

    def __init__(self, buf, pos: int = 0) -> None:
        self.buf, self.pos, self.size = buf, pos, len(buf)

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise _GgufCorrupt(f"{what} at byte {self.pos} needs {n} bytes, past the end of the "
                               f"file ({self.size} bytes): it is truncated or corrupt")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "little")

    def u64(self, what: str) -> int:
        return int.from_bytes(self.take(8, what), "little")

    def string(self, what: str) -> bytes:
        raw = self.take(self.u64(f"the length of {what}"), what)
        try:   # transformers decodes every string it reads: refuse here what it cannot
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _GgufCorrupt(f"{what} at byte {self.pos - len(raw)} is not UTF-8") from None
        return raw

    def skip_value(self, vtype: int, what: str, depth: int = 0) -> bytes | None:
        """Step over one metadata value; return its bytes when it is a scalar."""
        if vtype in _GGUF_SCALAR:
            return self.take(_GGUF_SCALAR[vtype], what)
        if vtype == _GGUF_STRING:
            self.string(what)
            return None
        if vtype != _GGUF_ARRAY:
            raise _GgufCorrupt(f"{what} has value type {vtype}, which GGUF does not define")
        etype, count = self.u32(f"the element type of {what}"), self.u64(f"the length of {what}")
        if etype in _GGUF_SCALAR:
            self.take(count * _GGUF_SCALAR[etype], what)
        elif etype == _GGUF_STRING:
            if count * 8 > self.size - self.pos:
                raise _GgufCorrupt(f"{what} claims {count} strings, more than the rest of the "
                                   "file can hold")
            for _ in range(count):
                self.string(what)
        elif etype == _GGUF_ARRAY and depth < GGUF_MAX_NESTING:
            if count * 12 > self.size - self.pos:
                raise _GgufCorrupt(f"{what} claims {count} arrays, more than the rest of the "
                                   "file can hold")
            for _ in range(count):
                self.skip_value(_GGUF_ARRAY, what, depth + 1)
        else:
            raise _GgufCorrupt(f"{what} holds elements of type {etype}, which GGUF does not "
                               f"define (or arrays nested deeper than {GGUF_MAX_NESTING})")
        return None


class GgufSummary(NamedTuple):
    data_bytes: int            # what its tensors hold
    layers: int | None         # decoder layers (blk.N) its tensors hold


def check_gguf_file(path: Path) -> GgufSummary:
    """Refuse a GGUF whose header cannot be what it claims, before transformers parses it
    (whose reader fails on one as a struct error, or loops over a count of 2**60); return
    what load_model compares its metadata with.

    The counts in the header are checked against the file size first; then every key,
    value, tensor name, shape and type is read with bounds checks, and each tensor's data
    must lie inside the file at the declared alignment. Reads only the header (README,
    Safety, gives the cost); remembered per file version, as resolve and load both ask."""
    st = Path(path).stat()
    return _check_gguf(Path(path).resolve(), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=8)
def _check_gguf(path: Path, size: int, _mtime_ns: int, _ino: int) -> GgufSummary:
    import mmap

    from gguf import GGML_QUANT_SIZES
    fix = "download it again (or write it again)"
    if size < 24:
        raise UserError(f"'{path}' is not a GGUF file ({size} bytes, less than a GGUF header): "
                        f"{fix}")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise UserError(f"'{path}' is not a GGUF file (bad magic bytes): {fix}")
        cur = _Cursor(buf, 4)
        version = cur.u32("the version")
        if version not in GGUF_VERSIONS:
            raise UserError(f"'{path}' is GGUF version {version}; svdc reads versions "
                            f"{' and '.join(map(str, GGUF_VERSIONS))} (a corrupt header, or a "
                            f"file from another tool): {fix}")
        n_tensors, n_kv = cur.u64("the tensor count"), cur.u64("the metadata count")
        if n_kv * _GGUF_MIN_KV + n_tensors * _GGUF_MIN_TENSOR > size - 24:
            raise UserError(f"'{path}' is corrupt: its header claims {n_tensors} tensors and "
                            f"{n_kv} metadata keys, more than its {size} bytes can hold: {fix}")
        try:
            alignment = 32                      # llama.cpp's default
            for i in range(n_kv):
                key = cur.string(f"metadata key {i}")
                shown = key[:60].decode("utf-8", "replace")
                vtype = cur.u32(f"the type of metadata key {shown!r}")
                raw = cur.skip_value(vtype, f"metadata value {shown!r}")
                if key == b"general.alignment":
                    alignment = (int.from_bytes(raw, "little", signed=vtype in _GGUF_SIGNED)
                                 if raw is not None and vtype in _GGUF_INTS else 0)
                    if alignment < 1 or alignment & (alignment - 1):   # as llama.cpp
                        raise _GgufCorrupt(f"general.alignment is {alignment} (type {vtype}); "
                                           "GGUF requires an integer, a power of two")
            tensors = []
            for i in range(n_tensors):
                name = cur.string(f"the name of tensor {i}")
                label = name[:60].decode("utf-8", "replace")
                n_dims = cur.u32(f"the dimension count of tensor {label!r}")
                if n_dims > GGUF_MAX_DIMS:
                    raise _GgufCorrupt(f"tensor {label!r} claims {n_dims} dimensions (GGUF "
                                       f"allows at most {GGUF_MAX_DIMS})")
                dims = [cur.u64(f"a dimension of tensor {label!r}") for _ in range(n_dims)]
                gtype = cur.u32(f"the type of tensor {label!r}")
                offset = cur.u64(f"the data offset of tensor {label!r}")
                tensors.append((label, dims, gtype, offset))
        except _GgufCorrupt as e:
            raise UserError(f"'{path}' is corrupt: {e}; {fix}") from None
        start = (cur.pos + alignment - 1) // alignment * alignment
        data = 0
        for label, dims, gtype, offset in tensors:
            try:
                block, block_bytes = GGML_QUANT_SIZES[gtype]
            except (KeyError, ValueError):
                raise UserError(f"'{path}' is corrupt: tensor {label!r} has ggml type {gtype}, "
                                f"which ggml does not define; {fix}") from None
            numel = 1
            for d in dims:
                numel *= d
            if numel % block:
                raise UserError(f"'{path}' is corrupt: tensor {label!r} of shape {dims} is not "
                                f"a whole number of its type's {block}-element blocks; {fix}")
            end = start + offset + numel // block * block_bytes
            if offset % alignment or end > size:
                why = (f"its data offset {offset} is not a multiple of the alignment "
                       f"{alignment}" if offset % alignment else
                       f"its data ends at byte {end}, past the end of the file ({size} bytes)")
                raise UserError(f"'{path}' is corrupt or truncated: tensor {label!r} {why}; {fix}")
            data += numel // block * block_bytes
    return GgufSummary(data, stored_layers([t[0] for t in tensors], gguf=True))


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
    if params and available_bytes and 2 * params > available_bytes:  # >= 16 bits a weight
        raise UserError(f"{where} describes about {params / 1e9:.3g} B parameters "
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
        raise UserError(f"{where} describes about {params / 1e9:.3g} B parameters, but the "
                        f"weight files hold only {weights_bytes / 2**20:.3g} MiB: a size in "
                        f"the config is wrong; {fix}")


def _is_dtype_name(value) -> bool:
    import torch
    return isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype)
