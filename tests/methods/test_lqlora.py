"""LQ-LoRA: alternating Q + L decomposition, configuration costs, ILP bit allocation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from compressor.core.measures import bits_per_weight
from compressor.errors import MissingStatistic, UserError
from compressor.methods.lqlora.budget import (
    NFConfig,
    candidate_configs,
    config_bits,
    nf_quantizer,
)
from compressor.methods.lqlora.decompose import lq_decompose
from compressor.primitives.grids import dequantize_nf, quantize_nf
from compressor.primitives.knapsack import ilp_allocate


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _lowrank_plus_noise(m: int, n: int, rank: int, noise: float, seed: int) -> torch.Tensor:
    g = _gen(seed)
    return (torch.randn(m, rank, generator=g) @ torch.randn(rank, n, generator=g)
            + noise * torch.randn(m, n, generator=g))


def _heavy_tailed(m: int, n: int, seed: int) -> torch.Tensor:
    """Student-t entries: outliers make NF blocks coarse, so more bits pay off a lot."""
    g = _gen(seed)
    z = torch.randn(m, n, generator=g)
    chi = torch.randn(m, n, 2, generator=g).pow(2).sum(-1)
    return z / (chi / 2).sqrt()


def test_lq_beats_quantization_only_at_same_config():
    w = _lowrank_plus_noise(48, 64, 4, 0.3, seed=1)
    cfg = NFConfig(3, 64)
    deq = dequantize_nf(quantize_nf(w, 3, 64, double_quant=True))
    q_only = float((w - deq).pow(2).sum() / w.pow(2).sum())
    q, a, b, info = lq_decompose(w, 8, nf_quantizer(cfg))
    approx = dequantize_nf(q) + b @ a
    err = float((w - approx).pow(2).sum() / w.pow(2).sum())
    assert err == pytest.approx(info["error"], rel=1e-5)
    # candidate 0 is quantization first plus the best rank-r fit of what it left
    assert info["errors"][0] < q_only
    assert err < 0.5 * q_only          # the low-rank structure is absorbed by L
    assert info["iterations"] >= 1
    assert a.shape == (8, 64) and b.shape == (48, 8)


def test_lq_rank_zero_is_quantization_only():
    w = _lowrank_plus_noise(16, 32, 2, 0.1, seed=2)
    q, a, b, info = lq_decompose(w, 0, nf_quantizer(NFConfig(4, 32)))
    assert a.shape == (0, 32) and b.shape == (16, 0) and info["iterations"] == 0
    assert torch.equal(q.codes, quantize_nf(w, 4, 32, double_quant=True).codes)


def test_lq_constant_weights_change_nothing_and_fisher_weights_matter():
    w = _lowrank_plus_noise(32, 48, 3, 0.5, seed=3)
    quantizer = nf_quantizer(NFConfig(2, 32))
    _, a0, b0, i0 = lq_decompose(w, 6, quantizer)
    _, a1, b1, i1 = lq_decompose(w, 6, quantizer, row_weight=torch.full((32,), 3.0),
                                        col_weight=torch.full((48,), 0.5))
    assert i1["errors"] == pytest.approx(i0["errors"], rel=1e-4)
    assert torch.allclose(b0 @ a0, b1 @ a1, atol=1e-4)
    # Strongly uneven row importance: the weighted decomposition must do better in the
    # weighted metric than the unweighted one.
    r = torch.ones(32)
    r[:4] = 30.0
    q2, a2, b2, i2 = lq_decompose(w, 6, quantizer, row_weight=r)
    q0, _, _, _ = lq_decompose(w, 6, quantizer)

    def werr(q, a, b):
        return float(((w - dequantize_nf(q) - b @ a) * r[:, None]).pow(2).sum())
    assert werr(q2, a2, b2) < werr(q0, a0, b0)


def test_lq_rank_too_large_is_user_error():
    with pytest.raises(ValueError, match="rank"):     # primitives raise ValueError (run() wraps)
        lq_decompose(torch.randn(8, 12), 9, nf_quantizer(NFConfig(4, 8)))


def test_candidate_configs_default_menu():
    cfgs = candidate_configs()
    assert {c.bits for c in cfgs} == {2, 3, 4, 8}
    assert {c.block_size for c in cfgs} == {16, 32, 64, 128, 256}
    assert all(c.double_quant for c in cfgs) and len(cfgs) == 20


def test_config_bits_known_values():
    # 64x256 NF4, blocks 64, double quant: codes 4 bits; 256 blocks -> int8 absmax codes
    # (8 bits / 64 weights), one fp32 second-level scale + one fp32 offset.
    m, n = 64, 256
    nblocks = m * n // 64
    expect = (m * n * 4 + nblocks * 8 + 32 + 32) / (m * n)
    assert config_bits(NFConfig(4, 64), m, n, 0) == pytest.approx(expect)
    with_lr = config_bits(NFConfig(4, 64), m, n, 8)
    assert with_lr - expect == pytest.approx(8 * (m + n) * 16 / (m * n))


# --- ILP ---------------------------------------------------------------------------------

def _brute_force(errors, bits, numels, budget):
    share = np.asarray(numels, float) / np.sum(numels)
    best = None
    for combo in itertools.product(range(errors.shape[1]), repeat=errors.shape[0]):
        b = sum(bits[i, j] * share[i] for i, j in enumerate(combo))
        if b <= budget + 1e-12:
            e = sum(errors[i, j] for i, j in enumerate(combo))
            if best is None or e < best[0]:
                best = (e, combo)
    return best


def test_ilp_matches_brute_force_optimum():
    rng = np.random.default_rng(0)
    bits = np.array([[2.2, 3.1, 4.3, 8.2]] * 4) + rng.uniform(0, 0.2, (4, 4))
    errors = np.sort(rng.uniform(0.01, 1.0, (4, 4)), axis=1)[:, ::-1].copy()
    numels = [100, 300, 50, 200]
    for budget in (2.5, 3.0, 3.6, 5.0):
        choice, info = ilp_allocate(errors, bits, numels, budget)
        e_bf, _ = _brute_force(errors, bits, numels, budget)
        assert info["objective"] == pytest.approx(e_bf, rel=1e-9)
        assert info["achieved_bits"] <= budget


def test_ilp_infeasible_budget_is_user_error():
    bits = np.array([[2.5, 4.5], [2.6, 4.6]])
    with pytest.raises(ValueError, match="below the smallest configuration 2.55"):
        ilp_allocate(np.ones((2, 2)), bits, [10, 10], 2.0)


def test_ilp_beats_best_uniform_on_heterogeneous_matrices():
    """Real decompositions of different matrices: ILP ≤ budget and < best fitting uniform."""
    rank = 4
    mats = [_heavy_tailed(32, 64, 10), _lowrank_plus_noise(32, 64, 2, 0.01, 11),
            torch.randn(64, 64, generator=_gen(12)), _heavy_tailed(64, 32, 13)]
    cfgs = candidate_configs((2, 3, 4), (32, 64))
    numels = [w.numel() for w in mats]
    total = sum(numels)
    errors = np.zeros((len(mats), len(cfgs)))
    bits = np.zeros_like(errors)
    for i, w in enumerate(mats):
        for j, c in enumerate(cfgs):
            info = lq_decompose(w, rank, nf_quantizer(c), max_iters=3)[3]
            errors[i, j] = info["error"] * w.numel() / total
            bits[i, j] = config_bits(c, *w.shape, rank)
    share = np.asarray(numels) / total
    uniform_bits = (bits * share[:, None]).sum(0)
    uniform_err = errors.sum(0)
    budget = 0.5 * (np.sort(uniform_bits)[2] + np.sort(uniform_bits)[3])  # between configs
    choice, info = ilp_allocate(errors, bits, numels, budget)
    achieved = float(sum(bits[i, j] * share[i] for i, j in enumerate(choice)))
    assert achieved <= budget and achieved == pytest.approx(info["achieved_bits"])
    fits = uniform_bits <= budget
    best_uniform = uniform_err[fits].min()
    ilp_err = float(sum(errors[i, j] for i, j in enumerate(choice)))
    assert ilp_err < best_uniform * 0.99
    assert info["fallback"] is None
    assert len(set(choice)) > 1  # genuinely mixed


# --- the lqlora method -------------------------------------------------------------------

def _target(name: str, w: torch.Tensor, plan: dict, fisher: torch.Tensor | None = None):
    from compressor.core.types import LinearStats, Target
    return Target(name=name, layer_index=0, kind=name, weight=w, bias=None,
                  stats=LinearStats(ntokens=16, fisher=fisher), generator=_gen(5),
                  dtype=torch.float16, plan=plan)


def test_method_plan_and_compress_meet_the_budget():
    from compressor.core.registry import get_method
    method = get_method("lqlora")()
    weights = {"a": _heavy_tailed(32, 64, 20), "b": _lowrank_plus_noise(64, 64, 2, 0.01, 21),
               "c": torch.randn(64, 32, generator=_gen(22))}
    cfg = method.Config(bits=4.25, rank=2, nf_bits=[2, 3, 4], block_sizes=[32, 64],
                        plan_iters=2, max_iters=5, error="weight", factor_dtype="storage")
    plan = method.plan(weights, cfg)
    assert set(plan) == set(weights)
    stored_bits = 0.0
    for name, w in weights.items():
        out = method.compress(_target(name, w, plan[name]), cfg)
        parts = out.module.parts
        assert [p.type_name for p in parts] == ["nf", "lowrank"]
        assert parts[0].bits == plan[name]["nf_bits"] == out.info["nf_bits"]
        # One source of truth: the planned cost is what the module stores.
        assert bits_per_weight(out.module) == pytest.approx(plan[name]["planned_bits"])
        stored_bits += 8 * sum(p.stored_bytes() for p in parts)
        assert torch.isfinite(out.module.dense_weight()).all()
        assert out.info["error"] <= plan[name]["planned_error"] * 1.05
    total = sum(w.numel() for w in weights.values())
    assert stored_bits / total <= 4.25
    assert stored_bits / total == pytest.approx(plan["a"]["ilp_achieved_bits"])


def test_method_fixed_config_and_needs():
    from compressor.core.registry import get_method
    cls = get_method("lqlora")
    method = cls()
    w = _lowrank_plus_noise(32, 48, 2, 0.2, 30)
    cfg = method.Config(bits=4, mixed=False, block_size=32, rank=4, error="weight")
    assert method.plan({"x": w}, cfg) == {}
    out = method.compress(_target("x", w, {}), cfg)
    assert out.info["nf_bits"] == 4 and out.info["block_size"] == 32
    assert cls.needs_for(cfg) == frozenset()
    fcfg = method.Config(bits=4, mixed=False, rank=4, fisher_weighted=True)
    assert cls.needs_for(fcfg) == frozenset({"fisher"})
    fisher = torch.rand(32, 48, generator=_gen(31))
    out_f = method.compress(_target("x", w, {}, fisher=fisher), fcfg)
    assert out_f.info["fisher_weighted"] is True
    with pytest.raises(MissingStatistic, match="fisher"):
        method.compress(_target("x", w, {}), fcfg)
    with pytest.raises(ValueError):
        method.Config(bits=2.75, mixed=False)       # a fixed config needs an integer width
    with pytest.raises(UserError, match="raise --bits"):
        method.run_plan({"x": w}, method.Config(bits=1.0, rank=4, nf_bits=[2], block_sizes=[64]))
    assert cls.needs_for(method.Config()) == frozenset({"gram", "fisher_rows"})  # fisher-output
    assert method.plan_needs_for(method.Config()) == frozenset({"gram"})
    with pytest.raises(ValueError, match="contradicts"):
        method.Config(fisher_weighted=True, error="weight")


def test_fisher_output_plan_error_is_invariant_to_input_scale():
    """Inputs ×s, weights ÷s: the same function, so the same loss increase. The Fisher row
    sums grow by s² with the Gram; the planned error (the ILP's unit across matrices) must not
    (issue 27: the raw row sums weighed each matrix by its input energy)."""
    from compressor.core.registry import get_method
    from compressor.core.types import LinearStats, Target
    g = _gen(3)
    w = _heavy_tailed(48, 64, 4)
    x = torch.randn(256, 64, generator=g) * torch.linspace(0.5, 3, 64)
    rows = torch.rand(48, generator=g) + 0.1
    s = 4.0                                            # a power of two: NF scales stay exact
    method = get_method("lqlora")()
    cfg = method.Config(bits=3.5, rank=2, nf_bits=[2, 4], block_sizes=[16, 64])

    def measure(w_, x_, rows_):
        gram = x_.T @ x_
        energy = float(torch.diagonal(gram).sum()) / x_.shape[0]
        tgt = Target(name="m", layer_index=0, kind="q_proj", weight=w_, bias=None,
                     stats=LinearStats(ntokens=x_.shape[0], gram=gram,
                                       fisher_rows=rows_ * energy),
                     generator=_gen(5), dtype=torch.float16)
        return method.plan_measure(tgt, cfg)

    base = measure(w, x, rows)
    scaled = measure(w / s, x * s, rows)
    assert np.allclose(base, scaled, rtol=1e-4)


def test_too_few_calibration_tokens_for_the_gptq_fit_are_said():
    from compressor.core.registry import get_method
    method = get_method("lqlora")()
    cfg = method.Config(bits=3.375, rank=8)
    advice = method.calibration_advice(cfg, 2048, 1536)
    assert advice and "2048 calibration tokens" in advice and "--nsamples" in advice
    assert method.calibration_advice(cfg, 8192, 1536) is None
    assert method.calibration_advice(method.Config(bits=3.375, rank=8, error="weight"), 16, 1536) is None
