"""The plan stage: the ILP meets the budget and picks the best mix (brute force on a small
menu); a one-entry menu is that recipe byte for byte; the whole pipeline writes at most the
budget; 8-bit low-rank factors stay within their grid and beat 16-bit ones at equal bytes."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import compressor
from compressor.api import compress
from compressor.core.measures import output_error, weight_bytes
from compressor.core.registry import get_method
from compressor.core.types import LinearStats, Target
from compressor.errors import UserError
from compressor.parts.qlowrank import QuantLowRankPart
from compressor.recipe import parse_recipe

SMALL_MENU = [{"method": "gptq", "bits": 3, "group_size": 32},
              {"method": "gptq", "bits": 4, "group_size": 32},
              [{"method": "gptq", "bits": 3, "group_size": 32}, {"method": "eora", "rank": 4}],
              {"method": "whitened-svd", "ratio": 0.3, "lowrank_bits": 8},
              {"method": "dense"}]


def _recipe(model_dir, out, stages):
    return parse_recipe({"model": str(model_dir), "stages": stages, "output": str(out),
                         "calibration": {"dataset": "builtin", "nsamples": 4, "seqlen": 64,
                                         "seed": 0}})


def _brute(errors, bits, numels, budget):
    total = sum(numels)
    best = None
    for combo in itertools.product(*[range(len(r)) for r in errors]):
        b = sum(bits[i][j] * numels[i] for i, j in enumerate(combo)) / total
        e = sum(errors[i][j] for i, j in enumerate(combo))
        if b <= budget + 1e-12 and (best is None or e < best[0]):
            best = (e, combo)
    return best


@pytest.mark.parametrize("budget", [3.95, 4.6, 5.5, 9.0])
def test_plan_meets_the_budget_with_the_lowest_error_mix(budget):
    rng = np.random.default_rng(1)
    cfg = get_method("plan").Config(bits=budget, menu=SMALL_MENU)
    names = [f"m{i}" for i in range(5)]
    shapes = [(64, 64), (96, 64), (64, 96), (64, 64), (32, 64)]
    weights = {n: torch.zeros(s) for n, s in zip(names, shapes)}
    base_bits = np.array([3.6, 4.6, 6.2, 11.0, 16.0])
    measures = {}
    for n in names:
        bits = (base_bits + rng.uniform(0, 0.3, 5)).tolist()
        err = np.sort(rng.uniform(0.01, 2.0, 5))[::-1]
        err[-1] = 0.0                        # dense: no error
        measures[n] = {"error": err.tolist(), "bits": bits}
    plan = get_method("plan")().plan(weights, cfg, measures=measures)
    numels = [weights[n].numel() for n in names]
    achieved = sum(measures[n]["bits"][plan[n]["candidate"]] * k
                   for n, k in zip(names, numels)) / sum(numels)
    assert achieved <= budget
    e_best, _ = _brute([measures[n]["error"] for n in names], [measures[n]["bits"] for n in names],
                       numels, budget)
    assert sum(plan[n]["planned_error"] for n in names) == pytest.approx(e_best, rel=1e-9)


def test_plan_refuses_a_budget_below_the_cheapest_mix():
    cfg = get_method("plan").Config(bits=2.0, menu=SMALL_MENU)
    measures = {"m": {"error": [1.0] * 5, "bits": [3.5, 4.5, 6.0, 11.0, 16.0]}}
    with pytest.raises(UserError, match="below the cheapest menu mix"):
        get_method("plan")().plan({"m": torch.zeros(8, 8)}, cfg, measures=measures)


@pytest.mark.parametrize("entry", [
    [{"method": "gptq", "bits": 4, "group_size": 32}],
    [{"method": "gptq", "bits": 3, "group_size": 32}, {"method": "eora", "rank": 4}],
    [{"method": "whitened-svd", "ratio": 0.3, "svd_method": "randomized"}],
], ids=["gptq", "gptq+eora", "randomized-svd"])
def test_a_one_entry_menu_is_that_recipe_byte_for_byte(tiny_model_dir, tmp_path, entry):
    alone = compress(_recipe(tiny_model_dir, tmp_path / "alone", entry))
    planned = compress(_recipe(tiny_model_dir, tmp_path / "plan",
                               [{"method": "plan", "bits": 32.0, "menu": [entry]}]))
    sa, sb = compressor.load(alone.output).state_dict(), compressor.load(planned.output).state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_the_pipeline_writes_at_most_the_budget_and_reports_the_choice(tiny_model_dir, tmp_path):
    budget = 5.0
    res = compress(_recipe(tiny_model_dir, tmp_path / "out",
                           [{"method": "plan", "bits": budget, "menu": SMALL_MENU}]))
    rows = res.report["modules"]
    written = sum(r["info"]["bits_per_weight"] * r["shape"][0] * r["shape"][1] for r in rows)
    numel = sum(r["shape"][0] * r["shape"][1] for r in rows)
    assert written / numel <= budget + 1e-3          # bits_per_weight is rounded to 1e-4
    assert res.report["totals"]["targets"]["bits_per_weight"] <= budget + 1e-9
    chosen = {r["info"]["candidate"] for r in rows}
    assert len(chosen) > 1                            # a mix, not one method
    for r in rows:
        assert len(r["info"]["menu_errors"]) == len(SMALL_MENU)
        assert np.isfinite(r["info"]["plan_error"])
    saved = json.loads((res.output / "report.json").read_text())
    assert saved["modules"][0]["info"]["menu_bits"] == rows[0]["info"]["menu_bits"]
    assert (res.output / "plan_per_layer.png").is_file()


def test_a_menu_entry_is_validated_like_a_stage():
    Config = get_method("plan").Config
    with pytest.raises(Exception, match="gptqq"):
        Config(bits=4, menu=[{"method": "gptqq", "bits": 4}])
    with pytest.raises(Exception, match="bitz"):
        Config(bits=4, menu=[{"method": "gptq", "bitz": 4}])
    with pytest.raises(Exception, match="mixed: false"):
        Config(bits=4, menu=[{"method": "lqlora", "bits": 3}])
    with pytest.raises(Exception, match="appears twice"):
        Config(bits=4, menu=[{"method": "dense"}, {"method": "dense"}])
    with pytest.raises(Exception, match="base stage"):
        Config(bits=4, menu=[{"method": "eora", "rank": 4}])
    assert len(Config(bits=4).candidates) > 20     # the default menu validates


def _factor_target(dtype=torch.bfloat16):
    torch.manual_seed(0)
    m, n = 192, 128
    x = torch.randn(2000, n) @ torch.randn(n, n) * 0.3
    w = torch.randn(m, n) @ torch.diag(torch.linspace(2, 0.05, n))
    return Target(name="t", layer_index=0, kind="q_proj", weight=w, bias=None,
                  stats=LinearStats(ntokens=2000, gram=x.T @ x),
                  generator=torch.Generator().manual_seed(0), dtype=dtype)


def test_8_bit_factors_dequantize_within_their_grid():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(8, 96, generator=g), torch.randn(64, 8, generator=g) * 5
    part = QuantLowRankPart.from_factors(a, b, bits=8, group_size=32)
    qa, qb = part.factors()
    # the balancing moves a scale d_i from B's column i to A's row i, B·A unchanged
    # so that both have the same norm: d_i = sqrt(|A_i| / |B_:,i|)
    d = (a.norm(dim=1) / b.norm(dim=0)).sqrt()
    for deq, ref, q in ((qa, a / d[:, None], part.qa), (qb, b * d[None, :], part.qb)):
        step = q.scale.float().repeat_interleave(32, dim=1)[:, :ref.shape[1]]
        assert ((deq - ref).abs() <= 0.5 * step * (1 + 1e-2)).all()   # half a grid step
    assert torch.allclose(part.dense(), b @ a, rtol=0, atol=0.02 * float((b @ a).abs().max()))


def test_whitened_svd_with_8_bit_factors_beats_16_bit_at_equal_bytes():
    t = _factor_target()
    M = get_method("whitened-svd")
    ref = output_error(t.weight, t.stats.gram)
    out = {}
    for bits in (None, 8):
        c = M().compress(t, M.Config(ratio=0.2, lowrank_bits=bits))
        out[bits] = (weight_bytes(c.module),
                     output_error(t.weight - c.module.dense_weight(), t.stats.gram) / ref)
    dense = t.weight.numel() * 2
    assert out[None][0] <= 0.8 * dense and out[8][0] <= 0.8 * dense   # ratio 0.2 of bytes
    assert out[8][1] < 0.5 * out[None][1]        # and a much lower error


def test_a_measures_file_prices_the_menu_once_for_every_budget(tiny_model_dir, tmp_path):
    cache = tmp_path / "menu.json"
    stage = {"method": "plan", "bits": 5.0, "menu": SMALL_MENU, "measures_file": str(cache)}
    first = compress(_recipe(tiny_model_dir, tmp_path / "a", [stage]))
    assert "plan.data_pass" in first.report["stage_seconds"] and cache.is_file()
    again = compress(_recipe(tiny_model_dir, tmp_path / "b", [stage]))
    assert "plan.data_pass" not in again.report["stage_seconds"]     # read, not measured
    sa, sb = compressor.load(first.output).state_dict(), compressor.load(again.output).state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    lower = compress(_recipe(tiny_model_dir, tmp_path / "c", [{**stage, "bits": 4.2}]))
    assert "plan.data_pass" not in lower.report["stage_seconds"]
    assert lower.report["totals"]["targets"]["bits_per_weight"] <= 4.2
    other = compress(_recipe(tiny_model_dir, tmp_path / "d", [{**stage, "menu": SMALL_MENU[:3]}]))
    assert "plan.data_pass" in other.report["stage_seconds"]         # another menu: re-measured
    cache.write_text("{}")
    with pytest.raises(UserError, match="not an svdc plan-measures file"):
        compress(_recipe(tiny_model_dir, tmp_path / "e", [stage]))


def test_the_plan_is_the_only_compression_stage(tiny_model_dir, tmp_path):
    with pytest.raises(Exception, match="make it the only compression stage"):
        _recipe(tiny_model_dir, tmp_path / "x", [{"method": "gptq"},
                                                 {"method": "plan", "bits": 4}])
