"""Quantized weight parts: packed integer codes plus the few constants needed to decode them.

Forward dequantizes to a dense weight in float32 and applies it in the input's dtype: this
is a storage format (what goes to disk and how bits are counted), not a fast kernel.
"""

from __future__ import annotations

from typing import Any

import torch

from compressor.primitives.grids import (
    NFQ,
    UniformQ,
    dequantize,
    dequantize_nf,
    n_groups,
    nf_absmax_from_double_quant,
)
from compressor.primitives.packing import pack_bits, unpack_bits

from .base import Part, register_part


@register_part
class UniformQuantPart(Part):
    """Group-wise uniform codes: ``qcodes`` (packed bitstream), ``scale`` float16
    (out, ngroups), ``zero`` uint8 (out, ngroups) only when asymmetric."""

    type_name = "quant"
    decodes_per_call = True

    def __init__(self, out_features: int, in_features: int, bits: int, group_size: int,
                 sym: bool, qcodes: torch.Tensor, scale: torch.Tensor,
                 zero: torch.Tensor | None = None):
        super().__init__(out_features, in_features)
        self.bits, self.group_size, self.sym = bits, group_size, sym
        self.register_buffer("qcodes", qcodes)
        self.register_buffer("scale", scale)
        if not sym:
            if zero is None:
                raise ValueError("an asymmetric quant part needs zero points")
            self.register_buffer("zero", zero)

    @classmethod
    def from_quant(cls, q: UniformQ) -> "UniformQuantPart":
        """Pack a ``UniformQ`` (its ``outliers``, if any, belong in a separate part)."""
        out_f, in_f = q.codes.shape
        return cls(out_f, in_f, q.bits, q.group_size, q.sym, pack_bits(q.codes, q.bits),
                   q.scale.to(torch.float16), None if q.sym else q.zero.to(torch.uint8))

    def to_quant(self) -> UniformQ:
        codes = unpack_bits(self.qcodes, self.bits, self.out_features * self.in_features)
        scale = self.scale.float()
        zero = (torch.full_like(scale, 2 ** (self.bits - 1)) if self.sym else self.zero.float())
        return UniformQ(codes.view(self.out_features, self.in_features), scale, zero,
                              self.bits, self.group_size, self.sym)

    def dense(self) -> torch.Tensor:
        return dequantize(self.to_quant())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.decoded().to(x.dtype))

    def extra_spec(self) -> dict[str, Any]:
        return {"bits": self.bits, "group_size": self.group_size, "sym": self.sym}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], dtype: torch.dtype) -> "UniformQuantPart":
        out_f, in_f, bits = spec["out"], spec["in"], spec["bits"]
        ng = n_groups(in_f, spec["group_size"])
        nbytes = -(-out_f * in_f * bits // 8)
        return cls(out_f, in_f, bits, spec["group_size"], spec["sym"],
                   torch.zeros(nbytes, dtype=torch.uint8),
                   torch.zeros(out_f, ng, dtype=torch.float16),
                   None if spec["sym"] else torch.zeros(out_f, ng, dtype=torch.uint8))


@register_part
class NFQuantPart(Part):
    """Blockwise NormalFloat codes: ``qcodes`` (packed) plus either ``absmax`` float32
    (nblocks,) or, with double quantization, ``absmax_codes`` int8 (nblocks,),
    ``absmax_scale`` float32 (one per 256 blocks) and ``absmax_offset`` float32 (1,)."""

    type_name = "nf"
    decodes_per_call = True

    def __init__(self, out_features: int, in_features: int, bits: int, block_size: int,
                 double_quant: bool, qcodes: torch.Tensor, absmax: torch.Tensor | None = None,
                 absmax_codes: torch.Tensor | None = None,
                 absmax_scale: torch.Tensor | None = None,
                 absmax_offset: torch.Tensor | None = None, dq_block_size: int = 256):
        super().__init__(out_features, in_features)
        self.bits, self.block_size, self.double_quant = bits, block_size, double_quant
        self.dq_block_size = dq_block_size
        self.register_buffer("qcodes", qcodes)
        if double_quant:
            self.register_buffer("absmax_codes", absmax_codes)
            self.register_buffer("absmax_scale", absmax_scale)
            self.register_buffer("absmax_offset", absmax_offset)
        else:
            self.register_buffer("absmax", absmax)

    @classmethod
    def from_quant(cls, q: NFQ) -> "NFQuantPart":
        out_f, in_f = q.codes.shape
        packed = pack_bits(q.codes, q.bits)
        if q.double_quant:
            return cls(out_f, in_f, q.bits, q.block_size, True, packed,
                       absmax_codes=q.absmax_codes, absmax_scale=q.absmax_scale.float(),
                       absmax_offset=q.absmax_offset.float(), dq_block_size=q.dq_block_size)
        return cls(out_f, in_f, q.bits, q.block_size, False, packed, absmax=q.absmax.float())

    def to_quant(self) -> NFQ:
        codes = unpack_bits(self.qcodes, self.bits, self.out_features * self.in_features)
        codes = codes.view(self.out_features, self.in_features)
        if not self.double_quant:
            return NFQ(codes, self.absmax.float(), self.bits, self.block_size)
        absmax = nf_absmax_from_double_quant(self.absmax_codes, self.absmax_scale,
                                                   self.absmax_offset, self.dq_block_size)
        return NFQ(codes, absmax, self.bits, self.block_size, True, self.absmax_codes,
                         self.absmax_scale, self.absmax_offset, self.dq_block_size)

    def dense(self) -> torch.Tensor:
        return dequantize_nf(self.to_quant())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.decoded().to(x.dtype))

    def extra_spec(self) -> dict[str, Any]:
        spec = {"bits": self.bits, "block_size": self.block_size,
                "double_quant": self.double_quant}
        if self.double_quant:
            spec["dq_block_size"] = self.dq_block_size
        return spec

    @classmethod
    def from_spec(cls, spec: dict[str, Any], dtype: torch.dtype) -> "NFQuantPart":
        out_f, in_f, bits, bs = spec["out"], spec["in"], spec["bits"], spec["block_size"]
        nbytes = -(-out_f * in_f * bits // 8)
        nblocks = -(-out_f * in_f // bs)
        packed = torch.zeros(nbytes, dtype=torch.uint8)
        if spec["double_quant"]:
            dq = spec.get("dq_block_size", 256)
            return cls(out_f, in_f, bits, bs, True, packed,
                       absmax_codes=torch.zeros(nblocks, dtype=torch.int8),
                       absmax_scale=torch.zeros(-(-nblocks // dq), dtype=torch.float32),
                       absmax_offset=torch.zeros(1, dtype=torch.float32), dq_block_size=dq)
        return cls(out_f, in_f, bits, bs, False, packed,
                   absmax=torch.zeros(nblocks, dtype=torch.float32))
