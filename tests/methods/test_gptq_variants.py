"""Every GPTQ variant against a from-the-definition reference on a small matrix.

The reference below is deliberately plain: float64, columns one at a time in processing
order, each column rounded on its group's grid and its error pushed onto every remaining
column through the inverse Hessian of the remaining columns, which is then downdated
(Gaussian elimination of the processed column) — the OBS update of the GPTQ paper (eq. 2-3)
without the Cholesky reformulation, the lazy blocks or any shared helper from
compressor.methods.gptq.solver. The grids (min/max, symmetric, range search) are written out here too.
"""

from __future__ import annotations

import math

import pytest
import torch

from compressor.core.registry import get_method
from compressor.core.types import LinearStats, Target
from compressor.methods.gptq.solver import gptq_quantize, prepare_hessian
from compressor.primitives.grids import (
    UniformQ,
    dequantize,
    group_grid,
    group_index,
    quantize_rtn,
)

FP16_MIN = 2.0 ** -24


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _problem(out_f: int = 10, in_f: int = 32, seed: int = 0, tokens: int = 400):
    """A weight and the Gram of correlated, unevenly scaled inputs (no dead columns)."""
    g = _gen(seed)
    w = torch.randn(out_f, in_f, generator=g)
    mix = torch.randn(in_f, in_f, generator=g) / math.sqrt(in_f)
    x = torch.randn(tokens, in_f, generator=g) @ (torch.eye(in_f) + mix)
    x = x * torch.linspace(0.3, 3.0, in_f)[torch.randperm(in_f, generator=g)]
    return w, x.T @ x


# ----------------------------------------------------------------------------- reference grids
def _ref_grid_range(lo: float, hi: float, bits: int, sym: bool) -> tuple[float, float]:
    maxq = 2 ** bits - 1
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = 2 * max(-lo, hi) / maxq if sym else (hi - lo) / maxq
    if scale <= 0:
        scale = 1.0
    scale = float(torch.tensor(min(max(scale, FP16_MIN), 65504.0)).half())   # stored in fp16
    zero = 2 ** (bits - 1) if sym else min(max(round(-lo / scale), 0), maxq)  # half-even
    return scale, float(zero)


def _ref_q(x: float, scale: float, zero: float, bits: int) -> tuple[float, float]:
    c = min(max(round(x / scale) + zero, 0), 2 ** bits - 1)
    return c, (c - zero) * scale


def _ref_grid(vals: list[float], bits: int, sym: bool, mse: tuple | None,
              weights: list[float] | None = None) -> tuple[float, float]:
    """Min/max grid of one row of one group; with ``mse`` = (n, maxshrink, norm) the range
    shrunk by p = 1 - k/n for every k < maxshrink·n, lowest sum w_j |q(x_j) - x_j|^norm kept
    (first minimum wins)."""
    lo, hi = min(min(vals), 0.0), max(max(vals), 0.0)
    best = _ref_grid_range(lo, hi, bits, sym)
    if mse is None:
        return best
    n, maxshrink, norm = mse
    wts = weights or [1.0] * len(vals)
    best_err = math.inf
    for k in range(math.ceil(maxshrink * n)):
        p = 1.0 - k / n
        s, z = _ref_grid_range(lo * p, hi * p, bits, sym)
        err = sum(wt * abs(_ref_q(x, s, z, bits)[1] - x) ** norm for x, wt in zip(vals, wts))
        if err < best_err:
            best, best_err = (s, z), err
    return best


def reference_gptq(w: torch.Tensor, gram: torch.Tensor, bits: int, gs: int, sym: bool = False,
                   percdamp: float = 0.01, act_order: bool = False, static: bool = False,
                   grid: str = "exact", blocksize: int = 128, mse: tuple | None = None,
                   mse_weighted: bool = False) -> torch.Tensor:
    """Codes (float64) of GPTQ from the definition; see the module docstring."""
    W = w.double().clone()
    out_f, n = W.shape
    H = gram.double().clone()
    H += percdamp * torch.diagonal(H).mean() * torch.eye(n, dtype=H.dtype)
    Hinv = torch.linalg.inv(H)                     # of all (remaining) columns
    diag = torch.diagonal(gram).double().tolist()
    order = (sorted(range(n), key=lambda j: -float(gram[j, j])) if act_order else list(range(n)))
    static = static or act_order
    grids: dict[tuple[int, int], tuple[float, float]] = {}

    def make_grid(src: torch.Tensor, g0: int) -> None:
        cols = list(range(g0, min(g0 + gs, n)))
        for r in range(out_f):
            grids[r, g0 // gs] = _ref_grid([float(src[r, c]) for c in cols], bits, sym, mse,
                                           [diag[c] for c in cols] if mse_weighted else None)

    if static:
        for g0 in range(0, n, gs):
            make_grid(W, g0)
    codes = torch.zeros_like(W)
    snapshot = W.clone()
    for t, j in enumerate(order):
        if t % blocksize == 0:
            snapshot = W.clone()        # what a lazily-updated W holds at a block start
        if not static and j % gs == 0:
            make_grid(snapshot if grid == "block-lazy" else W, j)
        for r in range(out_f):
            s, z = grids[r, j // gs]
            c, q = _ref_q(float(W[r, j]), s, z, bits)
            codes[r, j] = c
            err = (float(W[r, j]) - q) / float(Hinv[j, j])
            W[r, :] -= err * Hinv[j, :]             # OBS: remaining columns only (others are 0)
            W[r, j] = q
        Hinv = Hinv - torch.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]
    return codes


def _agree(q: UniformQ, ref: torch.Tensor) -> float:
    return float((q.codes.double() == ref).double().mean())


# ----------------------------------------------------------------------------- variants
VARIANTS = {
    "paper-exact": dict(),
    "block-lazy": dict(grid="block-lazy"),
    "static": dict(static_groups=True),
    "act-order": dict(act_order=True),
    "sym": dict(sym=True),
    "static-sym": dict(static_groups=True, sym=True),
    "damp-0.1": dict(percdamp=0.1),
    "mse": dict(mse_grid=20, mse_maxshrink=0.5, mse_norm=2.4),
    "mse-weighted-act-order": dict(act_order=True, mse_grid=50, mse_maxshrink=0.2, mse_weighted=True),
    "mse-static-norm2": dict(static_groups=True, mse_grid=10, mse_maxshrink=0.6, mse_norm=2.0),
}


def _ref_kwargs(kw: dict) -> dict:
    r = {k: kw[k] for k in ("sym", "percdamp", "act_order", "grid") if k in kw}
    r["static"] = kw.get("static_groups", False)
    if kw.get("mse_grid"):
        r["mse"] = (kw["mse_grid"], kw.get("mse_maxshrink", 0.8), kw.get("mse_norm", 2.4))
        r["mse_weighted"] = kw.get("mse_weighted", False)
    return r


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("bits,gs", [(3, 8), (4, 8)])
def test_variant_matches_reference(name: str, bits: int, gs: int) -> None:
    """Blocks of 16 with groups of 8: a group boundary falls inside every block, where the
    exact and the block-lazy grids differ."""
    kw = VARIANTS[name]
    w, gram = _problem(seed=bits)
    q, info = gptq_quantize(w, gram, bits, gs, blocksize=16, **kw)
    ref = reference_gptq(w, gram, bits, gs, blocksize=16, **_ref_kwargs(kw))
    assert info["retries"] == 0
    assert _agree(q, ref) == 1.0, f"{name}: {1 - _agree(q, ref):.1%} of codes differ"


def test_block_lazy_and_exact_differ_and_each_matches_its_own_reference() -> None:
    """The reference reads W, not the in-block working copy, at a group boundary inside a
    block: a real difference, not a relabelling."""
    w, gram = _problem(seed=11)
    exact, _ = gptq_quantize(w, gram, 3, 8, blocksize=16)
    lazy, _ = gptq_quantize(w, gram, 3, 8, blocksize=16, grid="block-lazy")
    assert not torch.equal(exact.scale, lazy.scale)
    assert torch.equal(exact.scale[:, 0], lazy.scale[:, 0])    # nothing updated yet: same grid
    # with one group per block the two coincide
    a, _ = gptq_quantize(w, gram, 3, 8, blocksize=8)
    b, _ = gptq_quantize(w, gram, 3, 8, blocksize=8, grid="block-lazy")
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale)


def test_reference_detects_a_wrong_grid() -> None:
    """The comparison can fail: the paper-exact reference rejects block-lazy's codes."""
    w, gram = _problem(seed=12)
    lazy, _ = gptq_quantize(w, gram, 3, 8, blocksize=16, grid="block-lazy")
    assert _agree(lazy, reference_gptq(w, gram, 3, 8, blocksize=16)) < 1.0


@pytest.mark.parametrize("c", [2.0 ** 10, 2.0 ** -12])
def test_hessian_normalization_per_sequence_or_per_token_is_immaterial(c: float) -> None:
    """llm-compressor / IST-DASLab keep H = 2/N_seq · Σ x xᵀ (N_seq sequences), svdc the plain
    Σ x xᵀ (per-token mean would be 1/N_tok): with windows of equal length these differ by a
    constant factor, which damping (relative to the mean diagonal) and the OBS update
    (ratios of Hinv entries) cancel. 8 windows of 512 tokens: 2/8 vs 1/4096 = 2^10, exact in
    floating point."""
    w, gram = _problem(seed=13)
    for kw in ({}, {"act_order": True}):
        a, ia = gptq_quantize(w, gram, 3, 8, **kw)
        b, ib = gptq_quantize(w, gram * c, 3, 8, **kw)
        assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale)
        assert ib["damp"] == pytest.approx(ia["damp"] * c)


def test_mse_grid_never_worse_than_min_max_on_its_objective() -> None:
    g = _gen(14)
    w = torch.randn(32, 64, generator=g) * torch.rand(32, 1, generator=g)
    w[0, 3] = 9.0                                       # an outlier: shrinking clips it
    for sym in (False, True):
        plain = group_grid(w, 3, 16, sym)
        best = group_grid(w, 3, 16, sym, mse_grid=100, mse_norm=2.0)

        def err(sz):
            s, z = sz
            gi = group_index(64, 16)
            q = (torch.clamp(torch.round(w / s[:, gi]) + z[:, gi], 0, 7) - z[:, gi]) * s[:, gi]
            return ((q - w) ** 2).view(32, 4, 16).sum(-1)
        assert bool((err(best) <= err(plain) + 1e-6).all())
        assert float(err(best).sum()) < 0.95 * float(err(plain).sum())


def test_mse_grid_respects_mask_and_ragged_group() -> None:
    """Masked entries and the padding of a ragged last group never enter the search."""
    w, gram = _problem(out_f=6, in_f=20, seed=15)
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[2, 17] = True
    w[2, 17] = 1e3
    q = quantize_rtn(w, 3, 8, mask=mask, mse_grid=20)
    w2 = w.clone()
    w2[2, 17] = 0.0
    q2 = quantize_rtn(w2, 3, 8, mask=mask, mse_grid=20)
    assert torch.equal(q.scale, q2.scale) and torch.equal(q.zero, q2.zero)
    gq, _ = gptq_quantize(w, gram, 3, 8, mask=mask, mse_grid=20)
    assert bool(torch.isfinite(dequantize(gq)).all()) and float(gq.scale.max()) < 10


def test_shared_hessian_gives_identical_results() -> None:
    """q/k/v (and gate/up) share one factorization; it must change nothing."""
    w, gram = _problem(seed=16)
    for kw in ({}, {"act_order": True}, {"percdamp": 0.1}):
        h = prepare_hessian(gram, kw.get("percdamp", 0.01), kw.get("act_order", False))
        a, ia = gptq_quantize(w, gram, 3, 8, **kw)
        b, ib = gptq_quantize(w, None, 3, 8, hessian=h, **kw)
        assert torch.equal(a.codes, b.codes) and ia == ib
    with pytest.raises(ValueError):       # a factorization made for another setting
        gptq_quantize(w, None, 3, 8, act_order=True, hessian=prepare_hessian(gram))


def _target(w: torch.Tensor, gram: torch.Tensor, name: str) -> Target:
    return Target(name=name, layer_index=0, kind=name.rsplit(".", 1)[-1], weight=w, bias=None,
                  stats=LinearStats(ntokens=400, gram=gram), generator=_gen(0), dtype=torch.float32)


def test_method_factors_a_shared_gram_once(monkeypatch) -> None:
    calls = []
    import compressor.methods.gptq.method as gptq_method
    real = gptq_method.prepare_hessian
    monkeypatch.setattr(gptq_method, "prepare_hessian",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    w, gram = _problem(seed=17)
    method = get_method("gptq")()
    cfg = method.Config(bits=3, group_size=8)
    outs = [method.compress(_target(w[i:i + 4], gram, f"m.{p}"), cfg).module.dense_weight()
            for i, p in zip((0, 3, 6), ("q_proj", "k_proj", "v_proj"))]
    assert len(calls) == 1
    other = gram + torch.eye(gram.shape[0])          # a different input: factored again
    method.compress(_target(w, other, "m.o_proj"), cfg)
    assert len(calls) == 2
    solo = dequantize(gptq_quantize(
        w[3:7], gram, 3, 8, act_order=cfg.act_order, mse_grid=cfg.mse_grid,
        mse_maxshrink=cfg.mse_maxshrink, mse_norm=cfg.mse_norm, mse_weighted=cfg.mse_weighted)[0])
    assert torch.equal(outs[1], solo)


def test_defaults_are_the_measured_best() -> None:
    """The shipped defaults (BENCHMARKS.md, GPTQ): act-order with a Hessian-weighted range search."""
    cfg = get_method("gptq").Config()
    assert cfg.act_order and cfg.mse_grid > 0 and cfg.mse_weighted and not cfg.sym
    assert cfg.mse_norm == 2.0 and cfg.blocksize == 128
    assert cfg.percdamp == 0.01
