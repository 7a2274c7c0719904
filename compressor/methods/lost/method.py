"""LOST adapted to post-training: low-rank part plus whole-channel sparse part.

LOST (Li et al. 2025, "LOST: Low-rank and Sparse Pre-training for Large Language
Models") trains a low-rank factorization next to a channel-wise sparse component. As a
post-training compressor: SVD of W; the top-r singular components are the low-rank part;
the residual R = W − U_r S_r V_rᵀ is searched for the c input channels (columns) with the
largest norms ‖R[:, j]‖, which are stored densely.
"""

from __future__ import annotations

import torch

from compressor.core.method import Method
from compressor.core.registry import register
from compressor.core.types import Compressed, Target
from compressor.parts.base import CompressedLinear
from compressor.parts.channels import ChannelSparsePart
from compressor.parts.lowrank import LowRankPart
from compressor.primitives.linalg import lowrank_factors, truncated_svd

from .config import LOSTConfig
from .sizing import lost_sizes


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
