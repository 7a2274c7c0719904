"""Dictionary part (CoSpaDi): W ≈ C·Dᵀ, a dense dictionary and row-sparse codes.

Stored: ``D`` (in, k) atoms, ``values`` (out, s) and the support of each code row in
one of two encodings, whichever is smaller (``support_encoding``):
- ``indices`` (out, s), int16 when k < 32768: row o is Σ_j values[o, j]·D[:, indices[o, j]];
- ``mask`` (out, ⌈k/8⌉) uint8, bit j of row o (little-endian within each byte) set when
  atom j is used, and ``values`` in ascending atom order. At k/s ≈ 2 a mask costs k/8
  bytes a row against 2s for int16 indices: 8× less.
Applied as z = x·D (…, k), then y = z·Cᵀ with C scattered one block of code rows at a
time into a dense (rows, k) matrix (a GEMM beats a gather or a sparse kernel at k/s ≈ 2
on CPU and GPU alike); the (out, in) weight is never built and the block size bounds the
extra memory.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from compressor.primitives.packing import pack_bits, unpack_bits
from compressor.primitives.sparse_coding import index_dtype

from .base import Part, register_part

# Elements of the transient dense code block built per forward step.
CODE_BLOCK_ELEMS = 1 << 22
ENCODINGS = ("indices", "mask")


def support_bytes_per_row(atoms: int, nnz: int, encoding: str) -> int:
    """Bytes one code row's support costs in ``encoding``."""
    if encoding == "mask":
        return math.ceil(atoms / 8)
    return nnz * (torch.iinfo(index_dtype(atoms)).bits // 8)


def support_encoding(atoms: int, nnz: int) -> str:
    """The smaller encoding of an s-of-k support (indices on a tie: no unpacking)."""
    mask = support_bytes_per_row(atoms, nnz, "mask")
    return "mask" if mask < support_bytes_per_row(atoms, nnz, "indices") else "indices"


def pack_support(indices: torch.Tensor, atoms: int) -> torch.Tensor:
    """(out, s) distinct atom indices → (out, ⌈k/8⌉) uint8 bit mask: each row padded to
    whole bytes (so rows can be sliced), packed as the 1-bit stream of ``quant.pack_bits``."""
    rows, nbytes = indices.shape[0], math.ceil(atoms / 8)
    bits = torch.zeros(rows, nbytes * 8, dtype=torch.uint8, device=indices.device)
    bits.scatter_(1, indices.long(), 1)
    return pack_bits(bits, 1).view(rows, nbytes)


def unpack_support(mask: torch.Tensor, atoms: int) -> torch.Tensor:
    """(rows, ⌈k/8⌉) uint8 → (rows, k) bool."""
    rows, nbytes = mask.shape
    return unpack_bits(mask, 1, rows * nbytes * 8).view(rows, -1)[:, :atoms].bool()


@register_part
class DictionaryPart(Part):
    type_name = "dictionary"

    def __init__(self, D: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                 encoding: str | None = None):
        """``indices`` (out, s) are distinct per row; ``encoding`` None picks the smaller."""
        in_features, atoms = D.shape
        out_features, nnz = values.shape
        if indices.shape != values.shape:
            raise ValueError(f"indices {tuple(indices.shape)} and values "
                             f"{tuple(values.shape)} must have the same shape")
        if nnz > atoms:
            raise ValueError(f"{nnz} non-zeros per row but only {atoms} atoms")
        encoding = encoding or support_encoding(atoms, nnz)
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown support encoding {encoding!r}: use one of {ENCODINGS}")
        super().__init__(out_features, in_features)
        self.atoms = atoms
        self.nnz = nnz
        self.encoding = encoding
        self.register_buffer("D", D.contiguous())
        if encoding == "mask":
            order = torch.argsort(indices.long(), dim=1)
            self.register_buffer("values", values.gather(1, order).contiguous())
            self.register_buffer("mask", pack_support(indices, atoms))
        else:
            self.register_buffer("values", values.contiguous())
            self.register_buffer("indices", indices.to(index_dtype(atoms)).contiguous())

    def _code_block(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows start:stop of the code matrix C (out, k) as a dense block."""
        block = torch.zeros(stop - start, self.atoms, dtype=dtype, device=self.values.device)
        values = self.values[start:stop].to(dtype)
        if self.encoding == "mask":
            return block.masked_scatter_(unpack_support(self.mask[start:stop], self.atoms),
                                         values)
        return block.scatter_add_(1, self.indices[start:stop].long(), values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.matmul(x, self.D.to(x.dtype))                       # (…, k)
        rows = max(1, CODE_BLOCK_ELEMS // max(1, self.atoms))
        if rows >= self.out_features:
            return torch.nn.functional.linear(z, self._code_block(0, self.out_features, x.dtype))
        y = z.new_empty(*z.shape[:-1], self.out_features)
        for start in range(0, self.out_features, rows):
            stop = min(self.out_features, start + rows)
            y[..., start:stop] = torch.nn.functional.linear(z, self._code_block(start, stop,
                                                                                x.dtype))
        return y

    def dense(self) -> torch.Tensor:
        return self._code_block(0, self.out_features, torch.float32) @ self.D.float().T

    def extra_spec(self) -> dict[str, Any]:
        return {"atoms": self.atoms, "nnz": self.nnz, "encoding": self.encoding}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], dtype: torch.dtype) -> "DictionaryPart":
        k, s = spec["atoms"], spec["nnz"]
        encoding, out = spec["encoding"], spec["out"]
        # Placeholder supports only shape the buffers; load_state_dict overwrites them.
        idx = torch.arange(s).expand(out, s)
        return cls(torch.zeros(spec["in"], k, dtype=dtype), torch.zeros(out, s, dtype=dtype),
                   idx, encoding)
