"""Pruning beyond the per-pattern known answers: its errors, its statistics and its use as a base."""

from __future__ import annotations

import pytest
import torch

from compressor.core.registry import get_method
from compressor.core.types import LinearStats, Target
from compressor.errors import MissingStatistic, UserError


def _target(w, gram=None, bias=None):
    return Target(name="model.layers.0.mlp.up_proj", layer_index=0, kind="up_proj", weight=w,
                  bias=bias, stats=LinearStats(ntokens=64, gram=gram),
                  generator=torch.Generator().manual_seed(0), dtype=torch.float32)


def _w(out=8, inp=24, seed=0):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))


def test_unstructured_sparsity_is_exact_per_row():
    m = get_method("prune")()
    res = m.run(_target(_w()), m.Config(sparsity=0.5))
    zeros = (res.module.dense_weight() == 0).sum(1)
    assert torch.equal(zeros, torch.full((8,), 12))


def test_wanda_without_calibration_is_missing_statistic():
    m = get_method("prune")()
    with pytest.raises(MissingStatistic, match="'gram'"):
        m.run(_target(_w()), m.Config(score="wanda"))


def test_n_m_on_indivisible_width_is_a_user_error():
    m = get_method("prune")()
    with pytest.raises(UserError, match="prune on model.layers.0.mlp.up_proj.*divisible"):
        m.run(_target(_w(inp=22)), m.Config(pattern="2:4"))


def test_bias_is_kept_and_applied():
    m = get_method("prune")()
    b = torch.randn(8)
    res = m.run(_target(_w(), bias=b), m.Config(sparsity=0.25))
    x = torch.randn(3, 24)
    torch.testing.assert_close(res.module(x), x @ res.module.dense_weight().T + b)


def test_eora_compensates_pruning():
    """Prune as EoRA's base: the compensation path lowers the output error it leaves."""
    w, x = _w(16, 32, seed=1), torch.randn(256, 32, generator=torch.Generator().manual_seed(2))
    gram = x.T @ x
    p, e = get_method("prune")(), get_method("eora")()
    base = p.run(_target(w, gram), p.Config(sparsity=0.5)).module
    comp = e.run(_target(w, gram), e.Config(rank=4), previous=base)
    assert [q.type_name for q in comp.module.parts] == ["sparse", "lowrank"]
    assert comp.info["output_error_after"] < comp.info["output_error_before"]
