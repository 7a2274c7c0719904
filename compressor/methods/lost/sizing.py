"""LOST's budget split: rank r and channel count c for an m x n matrix.

Budget (parameter-equivalents of the storage dtype): r(m + n) + c·(m + index bytes /
value bytes) <= (1 − ratio)·m·n, with a fraction sparse_frac of it for the channels. The
low-rank part keeps rank 1 at least: where sparse_frac leaves it less, the channels take
everything but one rank (the most channels the budget holds); a budget below one rank is an
error.
"""

from __future__ import annotations

import math

import torch

from compressor.primitives.linalg import check_rank
from compressor.primitives.sparse_coding import index_dtype


def lost_sizes(m: int, n: int, ratio: float, sparse_frac: float, rank: int | None,
               value_bytes: int, name: str = "matrix") -> tuple[int, int]:
    """(rank r, channels c) for an m x n matrix under the budget described above."""
    channel_cost = m + (torch.iinfo(index_dtype(n)).bits // 8) / value_bytes
    what = f"{name} ({m}x{n})"
    if rank is None:
        budget = (1.0 - ratio) * m * n + 1e-9
        c = math.floor(sparse_frac * budget / channel_cost)
        r = math.floor((budget - c * channel_cost) / (m + n))
        if budget < m + n:
            raise ValueError(f"lost: ratio {ratio} leaves {what} {budget:.0f} parameters, less "
                             f"than one rank ({m + n}): lower the ratio.")
        if r < 1:
            r = 1
            c = math.floor((budget - (m + n)) / channel_cost)
    else:
        r = rank
        c = math.floor(sparse_frac / (1.0 - sparse_frac) * r * (m + n) / channel_cost + 1e-9)
    c = min(c, n)
    check_rank(m, n, r, f"lost: {name}")
    if rank is not None and r * (m + n) + c * channel_cost >= m * n:
        raise ValueError(f"lost: rank {r} with {c} channels keeps as many parameters as the "
                        f"dense {what}: lower the rank or sparse_frac.")
    return r, c
