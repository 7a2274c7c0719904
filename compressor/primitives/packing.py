"""Bit packing of integer codes into a dense little-endian bitstream (any width 1..8)."""

from __future__ import annotations

import torch
from torch import Tensor

from compressor.primitives.grids import check_bits


_CHUNK = 1 << 18   # codes packed at a time (a multiple of 8): bounds the int64 scratch


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Little-endian bitstream: code k occupies bits [k·bits, (k+1)·bits); ceil(n·bits/8) bytes.

    Eight codes fill exactly ``bits`` bytes, so codes are packed eight at a time in int64,
    a chunk of codes at a time (the int64 words are 8 bytes per code).
    """
    check_bits(bits, 1, 8)
    flat = codes.reshape(-1).to(torch.uint8)
    n = flat.numel()
    if bits == 8:
        return flat.clone()
    out = torch.empty(-(-n * bits // 8), dtype=torch.uint8, device=flat.device)
    for s in range(0, n, _CHUNK):
        part = _pack_chunk(flat[s:s + _CHUNK], bits)
        out[s * bits // 8: s * bits // 8 + part.numel()] = part
    return out


def _pack_chunk(flat: Tensor, bits: int) -> Tensor:
    n = flat.numel()
    pad = (-n) % 8
    c = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 8).to(torch.int64)
    shifts = torch.arange(8, device=c.device, dtype=torch.int64) * bits
    word = (c << shifts).sum(1, keepdim=True)          # disjoint bit ranges: sum == or
    byte_shifts = torch.arange(bits, device=c.device, dtype=torch.int64) * 8
    out = ((word >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)
    return out[: -(-n * bits // 8)]


def unpack_bits(packed: Tensor, bits: int, numel: int) -> Tensor:
    """Inverse of ``pack_bits``: 1-D uint8 codes of length ``numel``."""
    check_bits(bits, 1, 8)
    flat = packed.reshape(-1).to(torch.uint8)
    if bits == 8:
        return flat[:numel].clone()
    if 8 % bits == 0:        # 1, 2, 4 bits: whole codes per byte, all in uint8
        shifts = torch.arange(0, 8, bits, device=flat.device, dtype=torch.uint8)
        return ((flat[:, None] >> shifts) & (2 ** bits - 1)).reshape(-1)[:numel]
    nwords = -(-numel // 8)
    need = nwords * bits
    # eight codes are `bits` bytes: one integer word each (int32 holds 3 bytes), built byte
    # by byte (no (n, bits) wide temporary), split with one broadcast shift
    wide = torch.int32 if bits <= 3 else torch.int64
    b = torch.cat([flat, flat.new_zeros(need - flat.numel())]).view(nwords, bits)
    word = b[:, 0].to(wide)
    for j in range(1, bits):
        word |= b[:, j].to(wide) << (8 * j)
    shifts = torch.arange(8, device=b.device, dtype=wide) * bits
    out = ((word[:, None] >> shifts) & (2 ** bits - 1)).to(torch.uint8).reshape(-1)
    return out[:numel]
