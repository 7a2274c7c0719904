"""Issue 11: two-sided weighted SVD, activation-aware LOST, WeLore on the spectra a method
truncates, LQ-LoRA on the output error with 16-bit factors."""

from __future__ import annotations

import pytest
import torch

from compressor.core.registry import get_method
from compressor.core.types import LinearStats, Target
from compressor.errors import MissingStatistic
from compressor.primitives.linalg import (
    two_sided_truncation,
    whitened_truncation,
    whitening,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def target(w, stats=None, plan=None, dtype=torch.float32, name="model.layers.0.mlp.up_proj"):
    return Target(name=name, layer_index=0, kind=name.rsplit(".", 1)[-1], weight=w, bias=None,
                  stats=stats or LinearStats(), generator=gen(3), dtype=dtype, plan=plan or {})


def gram_of(n, seed, tokens=300):
    g = gen(seed)
    x = torch.randn(tokens, n, generator=g) * torch.linspace(0.1, 4.0, n)
    x = x @ (torch.eye(n) + 0.4 * torch.randn(n, n, generator=g))
    return x.T @ x


def out_err(delta, G):
    d = delta.double()
    return float(((d @ G.double()) * d).sum())


# --- two-sided weighted SVD ------------------------------------------------------------------

def _brute_force(W, d, L, k, starts=12, iters=300):
    """min ‖diag(d)(W − BA)L‖² by alternating exact least squares on the vectorized problem
    (no SVD of the weighted matrix), best of several random starts."""
    W, d, L = W.double(), d.double(), L.double()
    m, n = W.shape
    D = torch.diag(d)
    target_vec = (D @ W @ L).reshape(-1)
    best = float("inf")
    g = gen(99)
    for _ in range(starts):
        A = torch.randn(k, n, generator=g, dtype=torch.float64)
        for _ in range(iters):
            # vec(D B A L) = kron(D, (A L)ᵀ) vec(B)   (row-major vec)
            M = torch.kron(D, (A @ L).T.contiguous())
            B = torch.linalg.lstsq(M, target_vec.unsqueeze(1)).solution.reshape(m, k)
            # vec(D B A L) = kron(D B, Lᵀ) vec(A)
            M2 = torch.kron(D @ B, L.T.contiguous())
            A = torch.linalg.lstsq(M2, target_vec.unsqueeze(1)).solution.reshape(k, n)
        best = min(best, float((D @ (W - B @ A) @ L).pow(2).sum()))
    return best


def test_two_sided_weighted_svd_equals_brute_force_optimum():
    g = gen(1)
    m, n, k = 7, 6, 2
    W = torch.randn(m, n, generator=g, dtype=torch.float64)
    d = torch.rand(m, generator=g, dtype=torch.float64) * 3 + 0.1
    L, _ = whitening(gram_of(n, 2).double(), 0.0)
    A, B = two_sided_truncation(W, d, L, k, dtype=torch.float64)
    ours = float((torch.diag(d) @ (W - B @ A) @ L.double()).pow(2).sum())
    bf = _brute_force(W, d, L, k)
    assert ours == pytest.approx(bf, rel=1e-6)
    # and the unweighted / one-sided answers are worse on this objective
    A1, B1 = whitened_truncation(W, L, k, dtype=torch.float64)
    assert ours < float((torch.diag(d) @ (W - B1 @ A1) @ L.double()).pow(2).sum()) * (1 - 1e-3)
    # with D = I it is SVD-LLM's whitened truncation
    A2, B2 = two_sided_truncation(W, None, L, k, dtype=torch.float64)
    assert torch.allclose(B2 @ A2, B1 @ A1, atol=1e-9)


def test_fwsvd_whiten_uses_rows_and_gram():
    g = gen(4)
    W = torch.randn(24, 16, generator=g)
    G = gram_of(16, 5)
    rows = torch.rand(24, generator=g) + 0.05
    st = LinearStats(ntokens=300, gram=G, fisher_rows=rows)
    m = get_method("fwsvd")()
    cfg = m.Config(rank=4, whiten=True)
    assert m.needs_for(cfg) == frozenset({"fisher_rows", "gram"})
    out = m.compress(target(W, st), cfg)
    L, _ = whitening(G, cfg.percdamp)
    A, B = two_sided_truncation(W, rows.double().sqrt(), L, 4)
    assert torch.allclose(out.module.dense_weight(), B @ A, atol=1e-5)
    with pytest.raises(ValueError, match="axis"):
        m.Config(whiten=True, axis="both")


# --- LOST ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5])
def test_activation_aware_lost_never_worse_than_its_rank_only_case(seed, ratio):
    g = gen(seed)
    W = torch.randn(40, 32, generator=g)
    W[:, 3] *= 6.0
    G = gram_of(32, seed + 10)
    st = LinearStats(ntokens=300, gram=G)
    lost = get_method("lost")()
    cfg = lost.Config(ratio=ratio, whiten=True, sparse_fracs=[0.0, 0.1, 0.3])
    res = lost.compress(target(W, st), cfg)
    only = lost.compress(target(W, st), lost.Config(ratio=ratio, whiten=True, sparse_frac=0.0))
    L, _ = whitening(G, cfg.percdamp)
    Gd = L.double() @ L.double().T
    e_lost = out_err(W - res.module.dense_weight(), Gd)
    e_only = out_err(W - only.module.dense_weight(), Gd)
    assert e_lost <= e_only * (1 + 1e-5)
    # the rank-only special case is whitened SVD at the same budget
    ws = get_method("whitened-svd")()
    ref = ws.compress(target(W, st), ws.Config(rank=only.info["rank"]))
    assert out_err(W - ref.module.dense_weight(), Gd) == pytest.approx(e_only, rel=1e-4)
    assert res.module.stored_bytes() <= (1 - ratio) * W.numel() * 4


def test_activation_aware_lost_finds_planted_channels_and_beats_whitened_svd():
    g = gen(7)
    W = torch.randn(48, 4, generator=g) @ torch.randn(4, 40, generator=g)
    cols = torch.tensor([2, 11, 30])
    W[:, cols] += 3 * torch.randn(48, 3, generator=g)
    G = gram_of(40, 8)
    st = LinearStats(ntokens=300, gram=G)
    lost, ws = get_method("lost")(), get_method("whitened-svd")()
    res = lost.compress(target(W, st), lost.Config(ratio=0.7, whiten=True, iters=4,
                                                    sparse_fracs=[0.0, 0.2, 0.4]))
    ref = ws.compress(target(W, st), ws.Config(ratio=0.7))
    assert res.info["channels"] >= 2          # the search spends budget on channels here
    assert len(set(cols.tolist()) & set(res.module.parts[1].indices.long().tolist())) >= 2
    L, _ = whitening(G, 0.01)
    Gd = L.double() @ L.double().T
    assert out_err(W - res.module.dense_weight(), Gd) < 0.5 * out_err(W - ref.module.dense_weight(), Gd)


def test_activation_aware_lost_goes_to_the_channel_end_when_inputs_are_correlated():
    # inputs with fewer directions than channels (as LLM activations): dropping a few
    # channels, their weight folded onto correlated ones by least squares, costs little,
    # while the rank-only split must give up whitened directions that carry signal
    g = gen(21)
    W = torch.randn(40, 32, generator=g)
    x = torch.randn(400, 20, generator=g) @ torch.randn(20, 32, generator=g)
    x += 0.05 * torch.randn(400, 32, generator=g)
    st = LinearStats(ntokens=400, gram=x.T @ x)
    lost, ws = get_method("lost")(), get_method("whitened-svd")()
    res = lost.compress(target(W, st), lost.Config(ratio=0.1, whiten=True))
    ref = ws.compress(target(W, st), ws.Config(ratio=0.1))
    assert res.info["rank"] <= 3 and res.info["channels"] >= 24
    L, _ = whitening(st.gram, 0.01)
    Gd = L.double() @ L.double().T
    assert out_err(W - res.module.dense_weight(), Gd) < 0.2 * out_err(W - ref.module.dense_weight(), Gd)
    assert res.module.stored_bytes() <= 0.9 * W.numel() * 4


def test_lost_split_keeps_rank_one_at_the_channel_end():
    from compressor.methods.lost.sizing import lost_sizes
    for m, n in ((192, 576), (576, 1536), (1536, 576), (40, 32)):
        for ratio in (0.1, 0.5, 0.9):
            for frac in (0.5, 0.99, 0.9999):
                r, c = lost_sizes(m, n, ratio, frac, None, 2)
                cost = r * (m + n) + c * (m + 1)
                assert r >= 1 and cost <= (1 - ratio) * m * n
            # a share that leaves less than one rank: the most channels that fit beside one
            assert r == 1 and (c + 1) * (m + 1) + (m + n) > (1 - ratio) * m * n
        # a budget below one rank cannot be met, whatever the share
        for frac in (0.0, 0.5, 0.99):
            with pytest.raises(ValueError, match="less than one rank.*lower the ratio"):
                lost_sizes(m, n, 1 - 0.5 * (m + n) / (m * n), frac, None, 2)


def test_data_free_lost_search_never_worse_than_svd():
    g = gen(12)
    W = torch.randn(40, 32, generator=g)
    lost, svd = get_method("lost")(), get_method("svd")()
    for ratio in (0.1, 0.3):
        res = lost.compress(target(W), lost.Config(ratio=ratio, act_scale=False))
        ref = svd.compress(target(W), svd.Config(ratio=ratio))
        e = float((W - res.module.dense_weight()).pow(2).sum())
        assert e <= float((W - ref.module.dense_weight()).pow(2).sum()) * (1 + 1e-5)
        assert "0" in {k.split(",")[1] for k in res.info["split_errors"]}


def _diag_stats(s, tokens=50):
    """Statistics whose Gram is diagonal: input channel j has RMS s_j over ``tokens``."""
    return LinearStats(ntokens=tokens, gram=torch.diag(s.pow(2) * tokens))


def test_channel_scaled_lost_is_the_weight_fit_on_scaled_columns():
    """act_scale fits W·diag(s) and undoes it: a uniform scale changes nothing, and the
    reported split errors are the diagonal-Gram output errors of what was written."""
    g = gen(13)
    W = torch.randn(40, 32, generator=g)
    lost = get_method("lost")()
    plain = lost.compress(target(W), lost.Config(ratio=0.3, act_scale=False))
    flat = lost.compress(target(W, _diag_stats(torch.full((32,), 3.0))), lost.Config(ratio=0.3))
    assert torch.allclose(plain.module.dense_weight(), flat.module.dense_weight(), atol=1e-5)
    s = torch.rand(32, generator=g) * 10 + 0.1
    res = lost.compress(target(W, _diag_stats(s)), lost.Config(ratio=0.3))
    err = float(((W - res.module.dense_weight()).double() * s.double()).pow(2).sum())
    key = f"{res.info['rank']},{res.info['channels']}"
    assert err == pytest.approx(res.info["split_errors"][key], rel=1e-4)
    assert res.info["act_scale"] is True and res.info["floored_channels"] == 0


def test_channel_scaled_lost_keeps_small_columns_with_large_inputs():
    """The SmolLM2 failure of weight-only LOST, planted: six small weight columns carry inputs
    30x the others. Weight-only LOST drops them and loses to plain SVD on the output error;
    scaled by the input RMS it keeps them and beats plain SVD by an order of magnitude."""
    g = gen(14)
    n = 48
    W = torch.randn(64, 6, generator=g) @ torch.randn(6, n, generator=g)
    W += 0.5 * torch.randn(64, n, generator=g)
    s = torch.ones(n)
    busy = torch.randperm(n, generator=g)[:6]
    W[:, busy] = 0.1 * torch.randn(64, 6, generator=g)
    s[busy] = 30.0
    G = torch.diag(s.pow(2)).double()
    lost, svd = get_method("lost")(), get_method("svd")()
    e = {}
    for name, res in (
            ("svd", svd.compress(target(W), svd.Config(ratio=0.1))),
            ("weight", lost.compress(target(W), lost.Config(ratio=0.1, act_scale=False))),
            ("scaled", lost.compress(target(W, _diag_stats(s)), lost.Config(ratio=0.1)))):
        e[name] = out_err(W - res.module.dense_weight(), G)
        if name != "svd":
            kept = set(res.module.parts[1].indices.long().tolist())
            assert set(busy.tolist()) <= kept if name == "scaled" else not kept & set(busy.tolist())
    assert e["weight"] > e["svd"] > 10 * e["scaled"]


def test_channel_scaled_lost_needs_the_calibration_gram():
    lost = get_method("lost")()
    with pytest.raises(MissingStatistic):
        lost.compress(target(torch.randn(8, 6)), lost.Config(ratio=0.2))
    assert lost.needs_for(lost.Config()) == frozenset({"gram"})
    assert lost.needs_for(lost.Config(act_scale=False)) == frozenset()


def test_whitened_lost_warns_when_calibration_is_small_for_its_channel_fit(caplog):
    from compressor.methods.lost.config import LOSTConfig
    from compressor.methods.svd.config import SVDConfig
    from compressor.safety.limits import warn_few_tokens
    stages = [SVDConfig(ratio=0.2), LOSTConfig(ratio=0.2), LOSTConfig(ratio=0.2, whiten=True)]
    with caplog.at_level("WARNING", logger="svdc"):
        lines = warn_few_tokens(stages, tokens=2048, widest_input=1536)
    assert len(lines) == 1 and lines[0].startswith("stage 3: lost whiten=true: 2048")
    assert "--nsamples" in lines[0] and lines[0] in caplog.text
    assert warn_few_tokens(stages, tokens=4 * 1536, widest_input=1536) == []


# --- WeLore on whitened spectra ----------------------------------------------------------------

def test_welore_allocation_for_whitened_svd_reads_whitened_spectra():
    from compressor.primitives.allocation import welore_ranks
    g = gen(20)
    names = [f"model.layers.0.{k}" for k in ("self_attn.q_proj", "mlp.up_proj", "mlp.down_proj")]
    weights = {names[0]: torch.randn(32, 24, generator=g),
               names[1]: torch.randn(40, 24, generator=g),
               names[2]: torch.randn(24, 40, generator=g)}
    grams = {names[0]: gram_of(24, 1), names[1]: torch.diag(torch.logspace(-3, 3, 24)),
             names[2]: gram_of(40, 3)}
    ws = get_method("whitened-svd")()
    cfg = ws.Config(ratio=0.4, allocation="welore")
    assert ws.plan_needs_for(cfg) == frozenset({"gram"})
    assert ws.plan_needs_for(ws.Config(ratio=0.4)) == frozenset()
    with pytest.raises(ValueError, match="spectra"):
        ws.plan(weights, cfg)
    measures = {k: ws.plan_measure(target(w, LinearStats(gram=grams[k]), name=k), cfg)
                for k, w in weights.items()}
    plan = ws.plan(weights, cfg, measures=measures)
    wl = {}
    for k, w in weights.items():
        L, _ = whitening(grams[k], cfg.percdamp)
        wl[k] = torch.linalg.svdvals(w.double() @ L)
    expect, _ = welore_ranks(wl, 0.4, shapes={k: tuple(w.shape) for k, w in weights.items()})
    assert {k: p["rank"] for k, p in plan.items()} == expect
    plain, _ = welore_ranks(weights, 0.4)
    assert expect != plain          # the data changes the allocation here


# --- LQ-LoRA on the output error -----------------------------------------------------------------

def test_lq_output_error_variant_measures_and_lowers_the_output_error():
    from compressor.methods.lqlora.budget import NFConfig, nf_quantizer
    from compressor.methods.lqlora.decompose import each, lq_decompose, lq_plan_errors
    from compressor.primitives.grids import dequantize_nf
    g = gen(30)
    W = torch.randn(48, 32, generator=g) * 0.05
    G = gram_of(32, 31)
    L, _ = whitening(G, 0.01)
    Gd = L.double() @ L.double().T
    quant = nf_quantizer(NFConfig(3, 32))
    q, a, b, info = lq_decompose(W, 4, quant, max_iters=10, whiten=L)
    e = out_err(W - dequantize_nf(q) - b @ a, Gd)
    assert info["abs_error"] == pytest.approx(e, rel=1e-4)
    q0, a0, b0, _ = lq_decompose(W, 4, quant, max_iters=10)          # data-free L
    assert e < out_err(W - dequantize_nf(q0) - b0 @ a0, Gd)
    est = lq_plan_errors(W, 4, each([quant]), whiten=L, generator=gen(0), svd_method="full")[0]
    assert e <= est * (1 + 1e-6)                  # the planning estimate is an upper bound


def test_lq_fisher_output_error_is_the_row_weighted_output_error():
    """error: fisher-output minimizes tr(D_F ΔW G ΔWᵀ): its reported error is that trace, its
    rank step is the exact minimizer for the quantized part it keeps, and it beats the plain
    output-error decomposition in that metric when the rows' Fisher is uneven."""
    from compressor.methods.lqlora.budget import NFConfig, nf_quantizer
    from compressor.methods.lqlora.decompose import each, lq_decompose, lq_plan_errors
    from compressor.primitives.grids import dequantize_nf
    g = gen(50)
    W = torch.randn(40, 32, generator=g) * 0.05
    G = gram_of(32, 51)
    L, _ = whitening(G, 0.01)
    Gd = L.double() @ L.double().T
    f = torch.rand(40, generator=g).double() * 0.1
    f[:5] = 25.0                                  # a few output channels the loss depends on
    r = f.sqrt()
    quant = nf_quantizer(NFConfig(2, 32))

    def ferr(dw):
        return out_err(dw * r[:, None], Gd)
    q, a, b, info = lq_decompose(W, 4, quant, max_iters=10, whiten=L, row_weight=r)
    dq = W.double() - dequantize_nf(q).double()
    assert info["abs_error"] == pytest.approx(ferr(dq - (b @ a).double()), rel=1e-4)
    # the rank-4 step is optimal for its Q: the SVD of diag(r)·(W − Q)·L, weighting undone
    u, s, vh = torch.linalg.svd((dq * r[:, None]) @ L.double())
    assert ferr(dq - (b @ a).double()) == pytest.approx(float(s[4:].pow(2).sum()), rel=1e-4)
    q0, a0, b0, _ = lq_decompose(W, 4, quant, max_iters=10, whiten=L)    # plain output error
    assert info["abs_error"] < ferr(W.double() - dequantize_nf(q0).double() - (b0 @ a0).double())
    est = lq_plan_errors(W, 4, each([quant]), whiten=L, row_weight=r, generator=gen(0),
                         svd_method="full")[0]
    assert info["abs_error"] <= est * (1 + 1e-6)
    with pytest.raises(ValueError, match="column weights"):
        lq_decompose(W, 4, quant, whiten=L, col_weight=torch.ones(32))


def test_lq_fisher_output_plan_follows_the_fisher_not_the_output_scale():
    """Two matrices: one with 100x louder outputs, the other with 10⁴x the Fisher per output
    (its errors cost more loss). The output-error plan favours the loud one, the
    Fisher-weighted plan the one the loss depends on."""
    m = get_method("lqlora")()
    g = gen(60)
    names = ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"]
    weights = {k: torch.randn(64, 64, generator=g) * 0.05 for k in names}
    grams = {names[0]: gram_of(64, 61) * 100, names[1]: gram_of(64, 62)}
    fisher = {names[0]: torch.ones(64), names[1]: torch.full((64,), 1e4)}
    plans = {}
    for error in ("output", "fisher-output"):
        cfg = m.Config(bits=3.8, rank=2, nf_bits=[2, 3, 4], block_sizes=[64], error=error)
        stats = {k: LinearStats(gram=grams[k], fisher_rows=fisher[k]) for k in names}
        measures = {k: m.plan_measure(target(weights[k], stats[k], name=k), cfg) for k in names}
        plans[error] = m.plan(weights, cfg, dtype=torch.float32, measures=measures)
        out = m.compress(target(weights[names[1]], stats[names[1]], plans[error][names[1]],
                                dtype=torch.float32, name=names[1]), cfg)
        assert out.info["error_kind"] == error
    assert plans["output"][names[0]]["nf_bits"] > plans["output"][names[1]]["nf_bits"]
    assert plans["fisher-output"][names[1]]["nf_bits"] > plans["fisher-output"][names[0]]["nf_bits"]
    cfg = m.Config(error="fisher-output")
    assert m.needs_for(cfg) == frozenset({"gram", "fisher_rows"})
    assert m.plan_needs_for(cfg) == frozenset({"gram"})
    with pytest.raises(MissingStatistic, match="Fisher row"):
        m.compress(target(weights[names[1]], LinearStats(gram=grams[names[1]]),
                          plans["output"][names[1]], dtype=torch.float32, name=names[1]), cfg)


def test_lq_plan_from_measures_and_16bit_factors_meet_the_budget():
    m = get_method("lqlora")()
    g = gen(40)
    names = ["model.layers.0.mlp.up_proj", "model.layers.0.self_attn.q_proj"]
    weights = {names[0]: torch.randn(64, 64, generator=g) * 0.05,
               names[1]: torch.randn(64, 64, generator=g) * 0.05}
    grams = {names[0]: gram_of(64, 41), names[1]: gram_of(64, 42) * 100}
    cfg = m.Config(bits=3.8, rank=2, nf_bits=[2, 3, 4], block_sizes=[64], error="output")
    assert m.Config().error == "fisher-output" and cfg.factor_dtype == "float16"
    with pytest.raises(ValueError, match="Gram"):
        m.plan(weights, cfg, dtype=torch.float32)
    measures = {k: m.plan_measure(target(w, LinearStats(gram=grams[k]), name=k), cfg)
                for k, w in weights.items()}
    plan = m.plan(weights, cfg, dtype=torch.float32, measures=measures)
    # the matrix whose outputs are 100x louder gets the wider code
    assert plan[names[1]]["nf_bits"] > plan[names[0]]["nf_bits"]
    total = 0.0
    for k, w in weights.items():
        out = m.compress(target(w, LinearStats(gram=grams[k]), plan[k], dtype=torch.float32, name=k), cfg)
        low = out.module.parts[1]
        assert low.A.dtype == torch.float16 and low.spec()["dtype"] == "float16"
        assert out.info["bits_per_weight"] == pytest.approx(plan[k]["planned_bits"])
        total += 8 * out.module.stored_bytes() - 0
        # a checkpoint load rebuilds the factors in their own dtype
        from compressor.parts.lowrank import LowRankPart
        assert LowRankPart.from_spec(low.spec(), torch.float32).A.dtype == torch.float16
    assert total / sum(w.numel() for w in weights.values()) <= 3.8 + 1e-9


def test_lq_gptq_rounding_keeps_the_grid_and_lowers_the_output_error():
    """rounding: gptq keeps nearest rounding's NF block scales and storage; with a diagonal
    Gram it is nearest rounding exactly (no error to push), with a correlated one its output
    error is lower."""
    from compressor.methods.gptq.solver import prepare_hessian
    from compressor.methods.lqlora.budget import NFConfig, nf_gptq_quantizer, nf_quantizer
    from compressor.methods.lqlora.decompose import lq_decompose
    g = gen(70)
    W = torch.randn(24, 48, generator=g) * 0.05
    conf = NFConfig(3, 32)
    diag = torch.diag(torch.rand(48, generator=g) + 0.5)
    d_near, q_near = nf_quantizer(conf)(W)
    d_diag, q_diag = nf_gptq_quantizer(conf, prepare_hessian(diag, 0.01, act_order=True))(W)
    assert torch.equal(q_diag.codes, q_near.codes) and torch.equal(d_diag, d_near)
    G = gram_of(48, 71)
    d_g, q_g = nf_gptq_quantizer(conf, prepare_hessian(G, 0.01, act_order=True))(W)
    assert torch.equal(q_g.absmax, q_near.absmax) and q_g.codes.dtype == torch.uint8
    Gd = G.double()
    assert out_err(W - d_g, Gd) < 0.9 * out_err(W - d_near, Gd)
    L, _ = whitening(G, 0.01)
    h = prepare_hessian(G, 0.01, act_order=True)
    _, _, _, i_g = lq_decompose(W, 2, nf_gptq_quantizer(conf, h), whiten=L)
    _, _, _, i_n = lq_decompose(W, 2, nf_quantizer(conf), whiten=L)
    assert i_g["abs_error"] < i_n["abs_error"]
    m = get_method("lqlora")()
    assert m.Config().rounding == "gptq" and m.Config(error="weight").rounding == "nearest"
    with pytest.raises(ValueError, match="rounding: nearest"):
        m.Config(error="weight", rounding="gptq")


@pytest.mark.parametrize("stack", [1 << 26, 3 * 24 * 48])
def test_lq_gptq_rounding_of_a_menu_in_one_stacked_pass_equals_each_alone(monkeypatch, stack):
    """The plan rounds every menu entry of a matrix in one GPTQ pass over stacked copies
    (row-independent under one inverse Hessian): the codes are those of one pass per entry,
    for code widths interleaved with block sizes, whole or cut into chunks of configurations."""
    import compressor.methods.lqlora.budget as budget
    from compressor.methods.gptq.solver import prepare_hessian
    monkeypatch.setattr(budget, "_STACK_ELEMENTS", stack)
    W = torch.randn(24, 48, generator=gen(80)) * 0.05
    h = prepare_hessian(gram_of(48, 81), 0.01, act_order=True)
    menu = budget.candidate_configs([2, 3, 4], [16, 32])
    menu = [menu[i] for i in (0, 2, 4, 1, 3, 5)]       # code widths interleaved
    together = budget.nf_gptq_quantize_all(menu, h)(W)
    assert len(together) == len(menu)
    for conf, (deq, q) in zip(menu, together):
        d1, q1 = budget.nf_gptq_quantizer(conf, h)(W)
        assert (q.bits, q.block_size) == (conf.bits, conf.block_size)
        assert torch.equal(q.codes, q1.codes) and torch.equal(deq, d1)
