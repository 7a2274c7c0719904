"""LOST adapted to post-training: low-rank part plus whole-channel sparse part.

LOST (Li et al. 2025, "LOST: Low-rank and Sparse Pre-training for Large Language
Models") trains a low-rank factorization next to a channel-wise sparse component, the
low-rank part initialized from the dominant singular components and the channels from the
rest. As a post-training compressor (an adaptation, not the paper's training): per matrix,
W ≈ BA + S with S on c whole input channels, fitted by alternating exact sub-steps (see
decompose.py) — on ‖ΔW·diag(s)‖ with s each input channel's RMS (``act_scale``; data-free
with ``--calib random``, whose random token ids show the input scales the weights hide), on
‖ΔW‖ without it, or with ``whiten`` on the calibration output error ‖ΔW·L‖ with channels
chosen by residual × activation norm. The split of the byte budget
between rank and channels is searched per matrix over the whole range, from rank-only to
nearly all channels (the error is U-shaped in the split, so a local search from rank-only
misses the channel end), and LOST is never worse than its rank-only special case (plain or
scaled or whitened SVD) on its own objective.
"""

from __future__ import annotations

import torch

from compressor.core.method import Method, require_stat
from compressor.core.registry import register
from compressor.core.types import Compressed, Target
from compressor.parts.base import CompressedLinear
from compressor.parts.channels import ChannelSparsePart
from compressor.parts.lowrank import LowRankPart
from compressor.primitives.linalg import balance_factors, positive_weights, whitening

from .config import LOSTConfig
from .decompose import lost_split
from .sizing import lost_sizes


@register
class LOST(Method):
    name = "lost"
    summary = ("LOST low-rank + channel-wise sparse (published as a pre-training method; "
               "this is a post-training adaptation): rank-r fit plus whole input channels, "
               "the split searched per matrix, on input-scaled weights (data-free with "
               "--calib random); whiten=true works on the output error.")
    Config = LOSTConfig

    def needs_for(self, cfg: LOSTConfig) -> frozenset[str]:
        return frozenset({"gram"}) if cfg.whiten or cfg.act_scale else frozenset()

    def calibration_advice(self, cfg: LOSTConfig, tokens: int, widest_input: int) -> str | None:
        # measured on SmolLM2: below ~4x the input width the channels' least-squares fit
        # scores worse than whitened SVD on held-out tokens (README, lost)
        if cfg.whiten and tokens < 4 * widest_input:
            return (f"lost whiten=true: {tokens} calibration tokens for inputs up to "
                    f"{widest_input} wide; its channel fit may not carry over to other text "
                    f"below ~{4 * widest_input} tokens: raise --nsamples or --seqlen")
        return None

    def compress(self, target: Target, cfg: LOSTConfig,
                 previous: CompressedLinear | None = None) -> Compressed:
        W = target.weight
        m, n = W.shape
        value_bytes = torch.empty(0, dtype=target.dtype).element_size()
        fracs = [cfg.sparse_frac] if cfg.sparse_frac is not None else cfg.sparse_fracs
        sizes = sorted({lost_sizes(m, n, cfg.ratio, f, cfg.rank, value_bytes, target.name)
                        for f in fracs}, key=lambda rc: rc[1])
        info = {}
        L = scale = None
        if cfg.whiten:
            L, winfo = whitening(require_stat(target, "gram").to(W.device), cfg.percdamp)
            info.update({"damp": winfo["damp"], "dead_channels": winfo["dead"]})
        elif cfg.act_scale:
            sq = torch.diagonal(require_stat(target, "gram")).to(W.device, torch.float64)
            rms = sq.clamp_min(0).div(max(target.stats.ntokens, 1)).sqrt()
            scale, floored = positive_weights(rms)
            info["floored_channels"] = floored
        (A, B, chosen, cols), sinfo = lost_split(W, sizes, L, cfg.iters, scale)
        A, B = balance_factors(A, B)
        parts = [LowRankPart(A.to(target.dtype), B.to(target.dtype))]
        if chosen.numel() > 0:
            parts.append(ChannelSparsePart(chosen.to(W.device), cols.to(target.dtype), n))
        kept = sum(p.stored_numel() for p in parts)
        info.update({"rank": sinfo["rank"], "channels": sinfo["channels"], "kept_params": kept,
                     "sparse_params": kept - parts[0].stored_numel(), "whiten": cfg.whiten,
                     "act_scale": cfg.act_scale and not cfg.whiten,
                     "split_errors": {k: float(f"{v:.6g}") for k, v in sinfo["errors"].items()}})
        return Compressed(CompressedLinear(m, n, parts, target.bias), info)
