"""LOST adapted to post-training: low-rank part plus whole-channel sparse part.

LOST (Li et al. 2025, "LOST: Low-rank and Sparse Pre-training for Large Language
Models") trains a low-rank factorization next to a channel-wise sparse component. As a
post-training compressor: SVD of W; the top-r singular components are the low-rank part;
the residual R = W − U_r S_r V_rᵀ (the remaining singular components) is searched for
the c input channels (columns) with the largest norms ‖R[:, j]‖, which are stored densely.

Budget (parameter-equivalents of the storage dtype): r(m + n) + c·(m + index bytes /
value bytes) <= (1 − ratio)·m·n, with a fraction ``sparse_frac`` of it for the channels.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from ..errors import UserError
from ..linalg import lowrank_factors, truncated_svd
from ..modules.base import CompressedLinear
from ..modules.channels import ChannelSparsePart
from ..modules.lowrank import LowRankPart
from ..sparse_coding import index_dtype
from . import register
from .base import Compressed, Method, MethodConfig, Target


class LOSTConfig(MethodConfig):
    ratio: float = Field(0.2, ge=0.0, lt=1.0, description=(
        "Fraction of each target matrix's parameters removed (0.2 keeps 80%), counting the "
        "low-rank factors, the kept channels and their indices."))
    sparse_frac: float = Field(0.1, ge=0.0, lt=1.0, description=(
        "Fraction of the kept parameter budget spent on whole input channels of the SVD "
        "residual; the rest goes to the low-rank part."))
    rank: int | None = Field(None, ge=1, description=(
        "Explicit rank; overrides `ratio`. The channels then get sparse_frac of the total "
        "r(m+n)/(1-sparse_frac)."))


def lost_sizes(m: int, n: int, ratio: float, sparse_frac: float, rank: int | None,
               value_bytes: int, name: str = "matrix") -> tuple[int, int]:
    """(rank r, channels c) for an m x n matrix under the budget described above."""
    channel_cost = m + (torch.iinfo(index_dtype(n)).bits // 8) / value_bytes
    what = f"{name} ({m}x{n})"
    if rank is None:
        budget = (1.0 - ratio) * m * n + 1e-9
        c = math.floor(sparse_frac * budget / channel_cost)
        r = math.floor((budget - c * channel_cost) / (m + n))
    else:
        r = rank
        c = math.floor(sparse_frac / (1.0 - sparse_frac) * r * (m + n) / channel_cost + 1e-9)
    c = min(c, n)
    if not 1 <= r <= min(m, n):
        raise UserError(f"lost: rank {r} does not fit {what}: use a rank in 1..{min(m, n)} "
                        f"(or a lower ratio / sparse_frac).")
    if rank is not None and r * (m + n) + c * channel_cost >= m * n:
        raise UserError(f"lost: rank {r} with {c} channels keeps as many parameters as the "
                        f"dense {what}: lower the rank or sparse_frac.")
    return r, c


@register
class LOST(Method):
    name = "lost"
    summary = ("LOST low-rank + channel-wise sparse (published as a pre-training method; "
               "this is a post-training adaptation): top-r SVD plus the residual's "
               "highest-norm input channels.")
    Config = LOSTConfig

    def compress(self, target: Target, cfg: LOSTConfig,
                 previous: CompressedLinear | None = None) -> Compressed:
        W = target.weight
        m, n = W.shape
        value_bytes = torch.empty(0, dtype=target.dtype).element_size()
        r, c = lost_sizes(m, n, cfg.ratio, cfg.sparse_frac, cfg.rank, value_bytes, target.name)
        U, S, Vh = truncated_svd(W, r, generator=target.generator)
        A, B = lowrank_factors(U, S, Vh, target.dtype)
        parts = [LowRankPart(A, B)]
        if c > 0:
            R = W.detach().to(torch.float64) - (U.double() * S.double()) @ Vh.double()
            norms = torch.linalg.vector_norm(R, dim=0)
            chosen = torch.sort(torch.topk(norms, c, sorted=False).indices).values
            parts.append(ChannelSparsePart(chosen, R[:, chosen].to(target.dtype), n))
        kept = sum(p.stored_numel() for p in parts)
        return Compressed(CompressedLinear(m, n, parts, target.bias),
                          {"rank": r, "channels": c, "kept_params": kept,
                           "sparse_params": kept - parts[0].stored_numel()})
