"""Pruning masks: per-row magnitude and N:M, from any score."""

from __future__ import annotations

import torch
from torch import Tensor


def magnitude_mask(w: Tensor, sparsity: float) -> Tensor:
    """Keep the largest |w| in each row (per-row, as Wanda compares within an output row).

    Per-row keeps every output channel alive and makes the achieved sparsity exact and
    uniform: round(sparsity · in) entries are removed from every row. ``w`` may be any
    score tensor (e.g. Wanda's |W|·‖x‖). Returns bool (out, in), True = kept.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity={sparsity} must be between 0 and 1 (fraction removed).")
    out_f, in_f = w.shape
    keep = in_f - int(round(sparsity * in_f))
    mask = torch.zeros(out_f, in_f, dtype=torch.bool, device=w.device)
    if keep > 0:
        idx = w.detach().abs().topk(keep, dim=1).indices
        mask.scatter_(1, idx, True)
    return mask


def n_m_mask(w: Tensor, n: int = 2, m: int = 4, score: Tensor | None = None) -> Tensor:
    """N:M mask: in every run of m consecutive inputs of a row keep the n best by ``score``
    (default |w|). Returns bool (out, in), True = kept."""
    out_f, in_f = w.shape
    if not 0 < n <= m:
        raise ValueError(f"N:M pattern {n}:{m} is invalid; need 0 < N <= M (e.g. 2:4).")
    if in_f % m:
        raise ValueError(f"N:M pruning needs in_features divisible by M; {in_f} % {m} != 0. "
                        "Use unstructured pruning for this layer.")
    s = (w.detach().abs() if score is None else score.detach()).reshape(out_f, in_f // m, m)
    idx = s.topk(n, dim=2).indices
    mask = torch.zeros(s.shape, dtype=torch.bool, device=w.device)
    mask.scatter_(2, idx, True)
    return mask.view(out_f, in_f)
