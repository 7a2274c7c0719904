"""svdc's group-wise integer codes as GGUF/ggml blocks, converted, never re-rounded.

A ggml block holds 32 consecutive weights of one row with an fp16 scale ``d``:
* Q4_0: w = d·(q − 8), q in [0, 16): svdc's symmetric 4-bit grid (zero point 8), exactly;
* Q8_0: w = d·q, q in [−128, 128): svdc's symmetric 8-bit grid (zero point 128), exactly;
* Q4_1: w = d·q + m: svdc's asymmetric 4-bit grid with m = −d·z, exact only where that
  product is an fp16 number (``q41_rounding`` says how far it is elsewhere).
Pure array math on (rows, 32·blocks) codes; the writer (gguf_export.py) does the rest.
"""

from __future__ import annotations

import numpy as np
import torch

from compressor.primitives.grids import UniformQ

BLOCK = 32


def gguf_type_for(q: UniformQ) -> str | None:
    """The ggml block type that holds ``q``'s grid, or None (group size, bits)."""
    if q.group_size != BLOCK or q.codes.shape[1] % BLOCK:
        return None
    if q.sym and q.bits == 4:
        return "Q4_0"
    if q.sym and q.bits == 8:
        return "Q8_0"
    if not q.sym and q.bits == 4:
        return "Q4_1"
    return None


def _nibbles(codes: np.ndarray) -> np.ndarray:
    """(rows·blocks, 32) codes in [0, 16) -> (rows·blocks, 16) bytes: low nibble weight j,
    high nibble weight j + 16 (ggml's order)."""
    return (codes[:, :16] | (codes[:, 16:] << 4)).astype(np.uint8)


def _fp16_bytes(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.float16).reshape(-1, 1).numpy().view(np.uint8)


def q41_rounding(q: UniformQ) -> float:
    """Largest |m_fp16 − (−d·z)| over the blocks: 0 when the Q4_1 form is exact."""
    m = -(q.scale * q.zero).double()
    return float((m.half().double() - m).abs().max()) if m.numel() else 0.0


def to_blocks(q: UniformQ, kind: str) -> np.ndarray:
    """(rows, bytes per row) uint8: the ggml blocks of ``q`` in the layout of ``kind``."""
    rows, cols = q.codes.shape
    nb = cols // BLOCK
    codes = q.codes.to(torch.int16).reshape(rows * nb, BLOCK).numpy()
    d = _fp16_bytes(q.scale.reshape(-1))
    if kind == "Q4_0":
        out = np.concatenate([d, _nibbles(codes)], axis=1)
    elif kind == "Q8_0":
        out = np.concatenate([d, (codes - 128).astype(np.int8).view(np.uint8)], axis=1)
    elif kind == "Q4_1":
        m = _fp16_bytes(-(q.scale * q.zero).reshape(-1))
        out = np.concatenate([d, m, _nibbles(codes)], axis=1)
    else:
        raise ValueError(f"no block layout for {kind}")
    return np.ascontiguousarray(out.reshape(rows, -1))
