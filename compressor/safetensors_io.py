"""One safetensors writer for svdc's own outputs, fed tensor by tensor from memory or from
byte ranges of other safetensors files, so a shard is assembled without holding it.

Why not ``safetensors.torch.save_file``: it needs every tensor of a file in memory, and a
streamed run's layers live on disk (its resume checkpoints). Both run modes write through this
one function with the same order rule, so an in-memory and a streamed run of the same recipe
write the same bytes (tests/core/test_engine_matrix.py).

The format: 8 bytes (little-endian u64) header length, a JSON header (``__metadata__`` and,
per tensor, dtype, shape and data offsets), padded with spaces to 8 bytes, then the data.
Tensors are laid out by dtype width (widest first) and then name, as the reference writer
does, so every tensor starts at an offset aligned to its width.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from compressor.errors import UserError

DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
          torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
          torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
          torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}
WIDTH = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
         "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_CHUNK = 64 << 20
_HEADER_MAX = 100 << 20


@dataclass(frozen=True)
class Entry:
    """One tensor to write: its name, dtype (safetensors code) and shape, and where its bytes
    come from — a CPU tensor, or ``nbytes`` at ``offset`` of the file ``path``."""
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    tensor: torch.Tensor | None = None
    path: Path | None = None
    offset: int = 0


def tensor_entry(name: str, t: torch.Tensor) -> Entry:
    t = t.detach().to("cpu").contiguous()
    if t.dtype not in DTYPES:
        raise ValueError(f"{name}: dtype {t.dtype} has no safetensors code")
    return Entry(name, DTYPES[t.dtype], tuple(t.shape), t.numel() * t.element_size(), tensor=t)


def read_header(path: Path, fix: str = "re-create it") -> tuple[dict, int]:
    """A safetensors file's header (the JSON mapping) and where its data starts; a UserError
    naming the file and ``fix`` when the length, the JSON or its shape is wrong. The one
    header parser: checkpoints read as input (models/integrity.py) and svdc's own files."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UserError(f"weights file '{path}' is truncated ({size} bytes): {fix}")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > min(size - 8, _HEADER_MAX):
            raise UserError(f"weights file '{path}' is corrupt or truncated (bad safetensors "
                            f"header): {fix}")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise UserError(f"weights file '{path}' is corrupt (unreadable safetensors header): "
                            f"{fix}") from None
    if not isinstance(header, dict):
        raise UserError(f"weights file '{path}' is corrupt (its safetensors header is a JSON "
                        f"{type(header).__name__}, not a mapping): {fix}")
    return header, 8 + n


def file_entries(path: Path) -> list[Entry]:
    """Every tensor of the safetensors file ``path``, as entries that copy its bytes."""
    header, start = read_header(path)
    out = []
    for name, h in header.items():
        if name == "__metadata__":
            continue
        try:
            a, b = (int(x) for x in h["data_offsets"])
            out.append(Entry(name, str(h["dtype"]), tuple(int(s) for s in h["shape"]), b - a,
                             path=Path(path), offset=start + a))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"weights file '{path}' is corrupt (bad tensor table entry "
                            f"{name!r}: {e}): re-create it") from None
    return out


def write_safetensors(path: Path, entries: list[Entry], metadata: dict[str, str]) -> None:
    """Write ``entries`` to ``path`` (widest dtype first, then by name)."""
    order = sorted(entries, key=lambda e: (-WIDTH[e.dtype], e.name))
    header: dict = {"__metadata__": dict(metadata)}
    pos = 0
    for e in order:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape),
                          "data_offsets": [pos, pos + e.nbytes]}
        pos += e.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for e in order:
            if e.tensor is not None:
                if e.nbytes:
                    f.write(e.tensor.reshape(-1).view(torch.uint8).numpy().data)
            else:
                _copy_range(e.path, e.offset, e.nbytes, f)


def _copy_range(src: Path, offset: int, n: int, dst) -> None:
    with open(src, "rb") as f:
        f.seek(offset)
        while n > 0:
            buf = f.read(min(n, _CHUNK))
            if not buf:
                raise UserError(f"{src}: ends early (truncated); the file is corrupt, "
                                f"re-create it")
            dst.write(buf)
            n -= len(buf)
