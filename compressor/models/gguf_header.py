"""A GGUF header from a stranger, walked with bounds before anything parses it: every count
against the file size, every read inside the file, each tensor's data at the declared
alignment. transformers' reader fails on a corrupt one as a struct error, or loops over a
count of 2**60; this says in one line what is wrong and how to fix it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

from compressor.errors import UserError

from .integrity import stored_layers


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
