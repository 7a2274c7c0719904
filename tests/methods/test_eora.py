"""EoRA: eigenspace low-rank compensation, its quantized path and the eora stage."""

from __future__ import annotations

import pytest
import torch

import compressor.methods.eora.factors as eora
from compressor.core.measures import output_error
from compressor.core.registry import get_method
from compressor.core.types import LinearStats, Target
from compressor.errors import UserError
from compressor.parts.base import CompressedLinear
from compressor.parts.lowrank import LowRankPart
from compressor.parts.qlowrank import QuantLowRankPart
from compressor.primitives.grids import dequantize, quantize_rtn

M, N = 24, 40


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _correlated_gram(n: int, tokens: int, seed: int) -> torch.Tensor:
    """Inputs with a few dominant, correlated directions (as LLM activations have)."""
    g = _gen(seed)
    scales = torch.logspace(1, -1.5, n)
    mix = torch.linalg.qr(torch.randn(n, n, generator=g)).Q
    x = torch.randn(tokens, n, generator=g) * scales @ mix.T
    return x.T @ x


def _delta(seed: int = 1) -> torch.Tensor:
    w = torch.randn(M, N, generator=_gen(seed))
    return w - dequantize(quantize_rtn(w, 2, group_size=8))


def test_full_rank_recovers_delta_in_whitened_metric():
    gram = _correlated_gram(N, 400, seed=2)
    d = _delta()
    a, b, info = eora.eora_factors(d, gram, rank=min(M, N))
    L = torch.linalg.cholesky(gram.double())
    resid = ((d.double() - b.double() @ a.double()) @ L).norm() / (d.double() @ L).norm()
    assert float(resid) < 1e-5
    assert info["eig_floored"] == 0 and info["whitened_residual"] < 1e-12
    assert a.dtype == b.dtype == torch.float32 and a.shape == (M, N) and b.shape == (M, M)


def test_rank_r_is_optimal_in_output_error_and_beats_plain_svd():
    gram = _correlated_gram(N, 400, seed=3)
    d = _delta(4)
    r = 6
    a, b, _ = eora.eora_factors(d, gram, r)
    a2, b2, _ = eora.svd_compensation(d, r)
    e_eora = output_error(d - b @ a, gram)
    e_svd = output_error(d - b2 @ a2, gram)
    # Known answer: the tail of the singular values of ΔW·L (Eckart–Young in the G metric).
    L = torch.linalg.cholesky(gram.double())
    s = torch.linalg.svdvals(d.double() @ L)
    assert e_eora == pytest.approx(float(s[r:].pow(2).sum()), rel=1e-4)
    assert e_eora < 0.8 * e_svd
    # …while plain SVD is the better one in the unweighted Frobenius norm.
    assert (d - b2 @ a2).norm() <= (d - b @ a).norm()


def test_singular_gram_is_floored_and_counted():
    g = _gen(5)
    x = torch.randn(200, N, generator=g)
    x[:, 3] = 0.0                                   # a dead channel
    x[:, 7] = x[:, 8]                               # two identical channels
    gram = x.T @ x
    d = _delta(6)
    a, b, info = eora.eora_factors(d, gram, rank=8, eig_floor=1e-6)
    assert info["eig_floored"] == 2
    assert info["eig_floor"] == pytest.approx(1e-6 * info["lambda_max"])
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert output_error(d - b @ a, gram) < output_error(d, gram)
    # Fewer tokens than channels: the missing directions are floored too.
    few = torch.randn(10, N, generator=g)
    _, _, info2 = eora.eora_factors(d, few.T @ few, rank=4)
    assert info2["eig_floored"] == N - 10


def test_zero_gram_falls_back_to_plain_svd():
    d = _delta(7)
    a, b, info = eora.eora_factors(d, torch.zeros(N, N), rank=5)
    a2, b2, _ = eora.svd_compensation(d, 5)
    assert info["fallback"] == "svd" and torch.allclose(b @ a, b2 @ a2, atol=1e-5)


def test_rank_out_of_range_is_user_error():
    with pytest.raises(ValueError, match="rank"):
        eora.eora_factors(_delta(), torch.eye(N), rank=M + 1)
    with pytest.raises(ValueError, match="rank"):
        eora.svd_compensation(_delta(), 0)


def test_quant_lowrank_part_roundtrip_strict():
    g = _gen(8)
    a, b = torch.randn(6, N, generator=g), torch.randn(M, 6, generator=g)
    part = QuantLowRankPart.from_factors(a, b, bits=4, group_size=16)
    qa, qb = part.qa, part.qb
    assert torch.allclose(part.dense(), qb.dense() @ qa.dense())
    # the balancing keeps B·A: the 4-bit product is within the grid's error of the float one
    err = (part.dense() - b @ a).norm() / (b @ a).norm()
    assert 0 < err < 0.15
    x = torch.randn(3, N, generator=g)
    assert torch.allclose(part(x), x @ part.dense().T, atol=1e-4)
    empty = QuantLowRankPart.from_spec(part.spec(), torch.float16)
    empty.load_state_dict(part.state_dict(), strict=True)
    assert torch.equal(empty.dense(), part.dense())
    assert set(part.state_dict()) == set(empty.state_dict())
    # 4-bit codes: (6*40 + 24*6) values at half a byte, plus scales and zeros.
    assert part.stored_bytes() < (6 * N + M * 6) * 2 / 2


def _target(w: torch.Tensor, gram: torch.Tensor, bias: torch.Tensor | None = None) -> Target:
    return Target(name="layers.0.mlp.down_proj", layer_index=0, kind="down_proj", weight=w,
                  bias=bias, stats=LinearStats(ntokens=400, gram=gram), generator=_gen(9),
                  dtype=torch.float32)


@pytest.mark.parametrize("base", ["rtn", "gptq"])
def test_eora_stage_keeps_previous_parts_and_adds_one(base):
    w = torch.randn(M, N, generator=_gen(10))
    gram = _correlated_gram(N, 400, seed=11)
    bias = torch.randn(M, generator=_gen(12))
    target = _target(w, gram, bias)
    bm = get_method(base)()
    prev = bm.compress(target, bm.Config(bits=3, group_size=8)).module
    em = get_method("eora")()
    out = em.compress(target, em.Config(rank=8), prev)
    assert [p.type_name for p in out.module.parts] == [p.type_name for p in prev.parts] + ["lowrank"]
    assert out.module.parts[0] is prev.parts[0]
    assert torch.equal(out.module.bias, bias)
    info = out.info
    assert info["rank"] == 8 and info["compensation"] == "eora"
    assert info["output_error_after"] < info["output_error_before"]
    delta_after = w - out.module.dense_weight()
    ref = output_error(w, gram)
    assert info["output_error_after"] == pytest.approx(output_error(delta_after, gram) / ref,
                                                       rel=1e-4)
    # The plain-SVD baseline is worse in the output metric.
    svd = em.compress(target, em.Config(rank=8, compensation="svd"), prev).info
    assert svd["output_error_after"] > info["output_error_after"]


def test_eora_stage_quantized_factors_and_errors():
    w = torch.randn(M, N, generator=_gen(13))
    gram = _correlated_gram(N, 400, seed=14)
    target = _target(w, gram)
    rtn = get_method("rtn")()
    prev = rtn.compress(target, rtn.Config(bits=2, group_size=8)).module
    em = get_method("eora")()
    full = em.compress(target, em.Config(rank=8), prev)
    q8 = em.compress(target, em.Config(rank=8, lowrank_bits=8, lowrank_group_size=8), prev)
    assert isinstance(q8.module.parts[-1], QuantLowRankPart)
    assert isinstance(full.module.parts[-1], LowRankPart)
    assert q8.info["lowrank_bytes"] < full.info["lowrank_bytes"]
    assert q8.info["output_error_after"] < q8.info["output_error_before"]
    assert q8.info["output_error_after"] == pytest.approx(full.info["output_error_after"], rel=0.05)
    spec = q8.module.spec()
    reloaded = CompressedLinear.from_spec(spec, torch.float32)
    reloaded.load_state_dict(q8.module.state_dict(), strict=True)
    assert torch.equal(reloaded.dense_weight(), q8.module.dense_weight())

    with pytest.raises(UserError, match="base stage"):
        em.run(target, em.Config(rank=8), None)
    with pytest.raises(UserError, match="rank"):
        em.run(target, em.Config(rank=M + 1), prev)


@pytest.mark.parametrize("shape", [(12, 30), (30, 12)])
def test_top_singular_matches_a_full_svd(shape):
    g = _gen(40)
    m = torch.randn(*shape, generator=g, dtype=torch.float64)
    u, s = eora.top_singular(m, 5)
    uf, sf, _ = torch.linalg.svd(m, full_matrices=False)
    torch.testing.assert_close(s, sf, rtol=1e-9, atol=1e-9)
    # singular vectors up to sign
    torch.testing.assert_close((u * uf[:, :5]).sum(0).abs(), torch.ones(5, dtype=torch.float64),
                               rtol=1e-8, atol=1e-8)


def test_method_decomposes_a_shared_gram_once(monkeypatch):
    calls = []
    real = eora.gram_eigen
    monkeypatch.setattr(eora, "gram_eigen", lambda g: calls.append(1) or real(g))
    gram = _correlated_gram(N, 400, seed=41)
    other = _correlated_gram(N, 400, seed=42)
    rtn, em = get_method("rtn")(), get_method("eora")()
    for seed, gr in ((43, gram), (44, gram), (45, other)):
        target = _target(torch.randn(M, N, generator=_gen(seed)), gr)
        prev = rtn.compress(target, rtn.Config(bits=3, group_size=8)).module
        em.compress(target, em.Config(rank=4), prev)
    assert len(calls) == 2
