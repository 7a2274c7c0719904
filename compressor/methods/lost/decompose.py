"""LOST's low-rank + channel-sparse split of one matrix, data-free or activation-aware.

W ≈ BA + S, BA of rank r, S non-zero on c whole input channels (columns). Both variants
alternate the two exact sub-steps of their objective:

* weight error, ‖W − BA − S‖_F, started from the pure low-rank fit: with channels C fixed,
  S[:, C] = (W − BA)[:, C] makes those columns exact, so BA should fit only the other
  columns: BA = SVD_r of W with C's columns zeroed. C: the r-residual's largest column
  norms (LOST's channel choice). With per-channel input scales s it runs on W·diag(s)
  (the output error under a diagonal Gram): without them the channels it drops are the
  small weight columns, which on real models often carry large inputs.
* activation-aware, ‖(W − BA − S)L‖_F with XᵀX = L Lᵀ (the output error on calibration
  inputs), started from the channels rather than the low rank: channels scored by
  ‖R[:, j]‖·‖x_j‖ (residual times activation norm, √G_jj); with C fixed the best S is a
  least-squares fit, S_C = R·G[:, C]·G[C, C]⁻¹ (the kept channels also absorb the error of the
  channels correlated with them), and with S fixed the best BA is the whitened truncation of
  W − S.

Each step of either alternation is optimal given the other part, so the objective never
rises; ``lost_split`` tries several rank / channel splits of the same byte budget (rank-only
included) and keeps the best, so the result is never worse than the rank-only special case.
"""

from __future__ import annotations

from typing import Any

import torch

import compressor.primitives.linalg as linalg


def _topk_sorted(score: torch.Tensor, c: int) -> torch.Tensor:
    return torch.sort(torch.topk(score, c, sorted=False).indices).values


def lost_data_free(w: torch.Tensor, r: int, c: int, iters: int = 2,
                   svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(A, B, channels, columns, squared error) minimizing ‖W − BA − S‖_F, float64.

    ``svd``: a full SVD (U, S, Vh) of W to start from (shared by several splits)."""
    w64 = w.detach().to(torch.float64)
    m, n = w64.shape
    u, s, vh = svd if svd is not None else linalg.full_svd64(w64)
    B, A = u[:, :r] * s[:r].sqrt(), s[:r].sqrt()[:, None] * vh[:r]
    resid = w64 - B @ A
    if c == 0:
        return A, B, torch.zeros(0, dtype=torch.long), w64.new_zeros(m, 0), float(resid.pow(2).sum())
    chosen = _topk_sorted(torch.linalg.vector_norm(resid, dim=0), c)
    err = float(resid.pow(2).sum() - resid[:, chosen].pow(2).sum())
    for _ in range(iters):
        masked = w64.clone()
        masked[:, chosen] = 0
        uu, ss, vv = linalg._svd64(masked, r)
        B2, A2 = uu * ss.sqrt(), ss.sqrt()[:, None] * vv
        resid2 = w64 - B2 @ A2
        norms2 = resid2.pow(2).sum(0)
        # re-choosing the channels on the new residual can only lower the error here
        chosen2 = _topk_sorted(norms2, c)
        err2 = float(norms2.sum() - norms2[chosen2].sum())
        if err2 >= err:
            break
        A, B, resid, err, chosen = A2, B2, resid2, err2, chosen2
    return A, B, chosen, resid[:, chosen], err


def _ls_fit(resid: torch.Tensor, rg: torch.Tensor, g: torch.Tensor, chosen: torch.Tensor
            ) -> tuple[torch.Tensor, float]:
    """(S_C, error): the best columns on C for ‖(R − S)L‖², S_C = R G[:, C] G[C, C]⁻¹, and that
    error, tr(R G Rᵀ) − ⟨S_C, R G[:, C]⟩ (the normal equations make the quadratic term equal
    the cross term), from ``rg`` = R·G without another product with L."""
    gcc = g[chosen][:, chosen]
    rhs = rg[:, chosen]                               # (m, c)
    chol, info = torch.linalg.cholesky_ex(gcc)
    if int(info) == 0:
        cols = torch.cholesky_solve(rhs.mT, chol).mT
    else:
        cols = torch.linalg.lstsq(gcc, rhs.mT).solution.mT
    return cols, float((rg * resid).sum() - (cols * rhs).sum())


def lost_whitened(w: torch.Tensor, L: torch.Tensor, r: int, c: int, iters: int = 2,
                  g: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(A, B, channels, columns, squared output error) minimizing ‖(W − BA − S)L‖_F, float64.

    ``L``: lower-triangular, L Lᵀ = the damped Gram (``g``, if already formed). c = 0 is the
    whitened truncation. With channels it starts from them (the c largest ‖W[:, j]‖·‖x_j‖,
    columns fitted by least squares), fits rank r to what they leave, then alternates:
    channels re-chosen on the new residual and refitted, rank r refitted. Starting from the
    channels reaches lower errors than starting from the rank-r fit on every SmolLM2 matrix
    measured (BENCHMARKS.md)."""
    w64 = w.detach().to(torch.float64)
    L64 = L.to(device=w64.device, dtype=torch.float64)
    g = L64 @ L64.mT if g is None else g.to(device=w64.device, dtype=torch.float64)

    def lowrank(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        uu, ss, vv = linalg._svd64(target @ L64, r)
        rt = ss.sqrt()
        A = torch.linalg.solve_triangular(L64, rt[:, None] * vv, upper=False, left=False)
        return A, uu * rt

    if c == 0:
        A, B = lowrank(w64)
        return A, B, torch.zeros(0, dtype=torch.long), w64.new_zeros(w64.shape[0], 0), \
            float(((w64 - B @ A) @ L64).pow(2).sum())
    act = torch.diagonal(g).clamp_min(0).sqrt()
    chosen = _topk_sorted(torch.linalg.vector_norm(w64, dim=0) * act, c)
    cols, _ = _ls_fit(w64, w64 @ g, g, chosen)
    err, A, B = float("inf"), None, None
    for _ in range(iters + 1):
        sparse = torch.zeros_like(w64)
        sparse[:, chosen] = cols
        A2, B2 = lowrank(w64 - sparse)
        resid2 = w64 - B2 @ A2
        rg2 = resid2 @ g
        # channels re-chosen on the new residual (outlier pursuit), or kept if that is better
        chosen2 = _topk_sorted(torch.linalg.vector_norm(resid2, dim=0) * act, c)
        step = None
        for ch in (chosen2, chosen) if not torch.equal(chosen2, chosen) else (chosen,):
            cols2, err2 = _ls_fit(resid2, rg2, g, ch)
            if step is None or err2 < step[0]:
                step = (err2, ch, cols2)
        if step[0] >= err:
            break
        err, chosen, cols, A, B = step[0], step[1], step[2], A2, B2
    return A, B, chosen, cols, err


def lost_split(w: torch.Tensor, sizes: list[tuple[int, int]], L: torch.Tensor | None = None,
               iters: int = 2, scale: torch.Tensor | None = None
               ) -> tuple[tuple[torch.Tensor, ...], dict[str, Any]]:
    """Best of several (rank, channels) splits of one budget on the variant's own objective.

    ``sizes``: candidate (r, c) pairs (include (r_max, 0), the rank-only split). ``scale``
    (without ``L``): positive per-input-channel weights s; the weight-error fit then runs on
    W·diag(s) and is undone, i.e. it minimizes ‖(W − BA − S)·diag(s)‖_F, the output error
    under a diagonal Gram diag(s²). Returns ((A, B, channels, columns), info) with info:
    rank, channels, error (squared, of the chosen split), errors ({"r,c": squared error} of
    every candidate)."""
    if scale is not None:
        if L is not None:
            raise ValueError("lost_split: a channel scale applies to the weight-error fit only")
        s = scale.to(device=w.device, dtype=torch.float64)
        (A, B, chosen, cols), info = lost_split(w.detach().to(torch.float64) * s, sizes, None,
                                                iters)
        return (A / s, B, chosen, cols / s[chosen]), info
    svd = g = None
    if L is None:
        svd = linalg.full_svd64(w)
    else:
        L = L.to(device=w.device, dtype=torch.float64)
        g = L @ L.mT
    best, errors = None, {}
    for r, c in sizes:
        out = (lost_data_free(w, r, c, iters, svd) if L is None
               else lost_whitened(w, L, r, c, iters, g))
        errors[f"{r},{c}"] = out[4]
        if best is None or out[4] < best[4]:
            best = out
    A, B, chosen, cols, err = best
    return (A, B, chosen, cols), {"rank": A.shape[0], "channels": int(chosen.numel()),
                                  "error": err, "errors": errors}
