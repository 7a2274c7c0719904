"""Dictionary part (CoSpaDi): W ≈ C·Dᵀ, a dense dictionary and row-sparse codes.

Stored: ``D`` (in, k) atoms, ``values`` (out, s) and ``indices`` (out, s) — row o of the
weight is Σ_j values[o, j] · D[:, indices[o, j]]. Indices are int16 when k < 32768.
Applied as z = x·D (…, k), then y_o = Σ_j values[o, j] · z[…, indices[o, j]]: the
(out, in) weight is never built. The second product scatters one block of code rows at
a time into a dense (rows, k) matrix and multiplies (a GEMM beats a gather or a sparse
kernel at k/s ≈ 2 on CPU and GPU alike); the block size bounds the extra memory.
"""

from __future__ import annotations

from typing import Any

import torch

from ..sparse_coding import index_dtype
from .base import Part, register_part

# Elements of the transient dense code block built per forward step.
CODE_BLOCK_ELEMS = 1 << 22


@register_part
class DictionaryPart(Part):
    type_name = "dictionary"

    def __init__(self, D: torch.Tensor, values: torch.Tensor, indices: torch.Tensor):
        in_features, atoms = D.shape
        out_features, nnz = values.shape
        if indices.shape != values.shape:
            raise ValueError(f"indices {tuple(indices.shape)} and values "
                             f"{tuple(values.shape)} must have the same shape")
        if nnz > atoms:
            raise ValueError(f"{nnz} non-zeros per row but only {atoms} atoms")
        super().__init__(out_features, in_features)
        self.atoms = atoms
        self.nnz = nnz
        self.register_buffer("D", D.contiguous())
        self.register_buffer("values", values.contiguous())
        self.register_buffer("indices", indices.to(index_dtype(atoms)).contiguous())

    def _code_block(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows start:stop of the code matrix C (out, k) as a dense block."""
        block = torch.zeros(stop - start, self.atoms, dtype=dtype, device=self.values.device)
        return block.scatter_add_(1, self.indices[start:stop].long(),
                                  self.values[start:stop].to(dtype))

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
        return {"atoms": self.atoms, "nnz": self.nnz}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], dtype: torch.dtype) -> "DictionaryPart":
        k, s = spec["atoms"], spec["nnz"]
        return cls(torch.zeros(spec["in"], k, dtype=dtype),
                   torch.zeros(spec["out"], s, dtype=dtype),
                   torch.zeros(spec["out"], s, dtype=index_dtype(k)))
