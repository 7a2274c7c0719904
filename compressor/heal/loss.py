"""Heal's losses on one window: KL from the teacher's cached top-k distribution, or plain
next-token cross-entropy. Both in fp32 whatever the compute dtype, both means over positions.

Top-k KL. The teacher keeps its k most likely tokens per position and lumps the rest into one
tail bucket; the student's distribution is lumped the same way (its tail is the exact
log-sum-exp of its log-probs outside the teacher's k), and the loss is the KL between these
two (k+1)-outcome distributions:

    KL_k = Σ_{j ≤ k} p_j (log p_j − log q_j) + p_tail (log p_tail − log q_tail)

By the data-processing inequality KL_k ≤ KL(p‖q), with equality at k = V (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def topk_kl(logits: torch.Tensor, t_logp: torch.Tensor, t_index: torch.Tensor,
            t_tail: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL_k(teacher ‖ student). logits (T, V); t_logp, t_index (T, k);
    t_tail (T,) (−inf when k = V)."""
    s_logp = torch.log_softmax(logits.float(), dim=-1)
    s_top = s_logp.gather(-1, t_index)
    p_top = t_logp.exp()
    kl = (p_top * (t_logp - s_top)).sum(-1)
    if torch.isfinite(t_tail).any():
        s_tail = s_logp.scatter(-1, t_index, float("-inf")).logsumexp(-1)
        p_tail = t_tail.exp()
        # p_tail = 0 contributes 0 (not 0 · (−inf))
        kl = kl + torch.where(p_tail > 0, p_tail * (t_tail - s_tail), torch.zeros_like(kl))
    return kl.mean()


def next_token_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of one window: logits (T, V), ids (T,)."""
    return F.cross_entropy(logits[:-1].float(), ids[1:])
