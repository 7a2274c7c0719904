"""Known-answer tests for compressor.linalg and compressor.allocation (small tensors)."""

import math

import pytest
import torch

from compressor.primitives.allocation import uniform_ranks, welore_ranks
from compressor.primitives.linalg import (
    lowrank_factors,
    positive_weights,
    rank_from_ratio,
    singular_values,
    truncated_svd,
    weighted_truncation_rows_cols,
    whitened_truncation,
    whitening,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def low_rank_matrix(m, n, k, seed=0):
    g = gen(seed)
    return torch.randn(m, k, generator=g) @ torch.randn(k, n, generator=g)


# --- rank_from_ratio -------------------------------------------------------------------

def test_rank_from_ratio_arithmetic():
    assert rank_from_ratio(576, 576, 0.2) == 230           # 0.8 * 576*576 / 1152 = 230.4
    assert rank_from_ratio(576, 1536, 0.0) == (576 * 1536) // (576 + 1536)
    assert rank_from_ratio(64, 96, 0.0) == math.floor(64 * 96 / 160)
    assert rank_from_ratio(8, 8, 0.5) == 2                  # exactly 2.0
    assert rank_from_ratio(6, 15, 0.3) == 3                 # 0.7*90/21 = 3 (2.999... in binary)
    assert rank_from_ratio(6, 30, 0.8) == 1                 # 0.2*180/36 = 1 (0.999... in binary)
    assert rank_from_ratio(4096, 11008, 0.4) == math.floor(0.6 * 4096 * 11008 / 15104)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_rank_from_ratio_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError):
        rank_from_ratio(64, 96, ratio)


def test_rank_from_ratio_rejects_rank_zero():
    with pytest.raises(ValueError, match="rank 0"):
        rank_from_ratio(2, 2, 0.5)  # 0.5 * 4 / 4 = 0.5 -> 0


# --- truncated SVD ---------------------------------------------------------------------

@pytest.mark.parametrize("method", ["full", "randomized"])
def test_exact_rank_recovered(method):
    w = low_rank_matrix(64, 96, 7)
    U, S, Vh = truncated_svd(w, 7, generator=gen(1), method=method)
    assert U.shape == (64, 7) and S.shape == (7,) and Vh.shape == (7, 96)
    assert U.dtype == S.dtype == Vh.dtype == torch.float32
    rel = torch.linalg.norm(U @ torch.diag(S) @ Vh - w) / torch.linalg.norm(w)
    assert rel < 1e-5
    A, B = lowrank_factors(U, S, Vh, torch.float32)
    assert A.shape == (7, 96) and B.shape == (64, 7)
    assert torch.linalg.norm(B @ A - w) / torch.linalg.norm(w) < 1e-5


def test_randomized_matches_full_on_decaying_spectrum():
    g = gen(3)
    q1 = torch.linalg.qr(torch.randn(64, 64, generator=g)).Q
    q2 = torch.linalg.qr(torch.randn(96, 64, generator=g)).Q
    w = q1 @ torch.diag(0.7 ** torch.arange(64.0)) @ q2.T
    _, s_full, _ = truncated_svd(w, 5)
    _, s_rand, _ = truncated_svd(w, 5, generator=gen(2), method="randomized")
    assert torch.allclose(s_full, s_rand, rtol=1e-4)


def test_randomized_is_seeded():
    w = torch.randn(64, 96, generator=gen(4))
    a = truncated_svd(w, 5, generator=gen(9), method="randomized", oversample=2, n_iter=1)
    b = truncated_svd(w, 5, generator=gen(9), method="randomized", oversample=2, n_iter=1)
    c = truncated_svd(w, 5, generator=gen(10), method="randomized", oversample=2, n_iter=1)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[1], c[1])  # a different seed gives a different sketch
    state = torch.random.get_rng_state()
    truncated_svd(w, 5, generator=gen(9), method="randomized")
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


def test_truncated_svd_rejects_bad_rank():
    w = torch.randn(8, 12)
    for r in (0, 9):
        with pytest.raises(ValueError):
            truncated_svd(w, r)


def test_singular_values():
    w = low_rank_matrix(20, 30, 4)
    s = singular_values(w)
    assert s.dtype == torch.float64 and s.shape == (20,)
    assert torch.allclose(s[:4], torch.linalg.svdvals(w.double())[:4])
    assert (s[4:] < 1e-4 * s[0]).all()


# --- whitening -------------------------------------------------------------------------

def test_whitening_pd_gram_gives_identity():
    x = torch.randn(200, 32, generator=gen(5)) * torch.linspace(0.1, 10, 32)
    gram = x.T @ x
    L, info = whitening(gram, percdamp=0.0)
    assert info["method"] == "cholesky" and info["retries"] == 0 and info["damp"] == 0.0
    assert L.dtype == torch.float64
    assert torch.equal(L, torch.tril(L))
    li = torch.linalg.solve_triangular(L, torch.eye(32, dtype=torch.float64), upper=False)
    assert torch.allclose(li @ gram.double() @ li.T, torch.eye(32, dtype=torch.float64),
                          atol=1e-6)


def test_whitening_damped_gram_matches_contract():
    x = torch.randn(100, 16, generator=gen(6))
    gram = x.T @ x
    L, info = whitening(gram, percdamp=0.05)
    expected = gram.double() + info["damp"] * torch.eye(16, dtype=torch.float64)
    assert info["damp"] == pytest.approx(0.05 * float(torch.diagonal(gram).double().mean()))
    assert torch.allclose(L @ L.T, expected, rtol=1e-9, atol=1e-9)


def test_whitening_dead_channel_is_damped_not_nan():
    x = torch.randn(100, 16, generator=gen(7))
    x[:, 3] = 0.0                       # a dead channel: singular Gram
    gram = x.T @ x
    with pytest.raises(Exception):
        torch.linalg.cholesky(gram.double())
    L, info = whitening(gram)
    assert torch.isfinite(L).all()
    assert info["damp"] > 0 and info["dead"] == 1


def test_whitening_zero_damp_singular_gram_retries():
    x = torch.randn(4, 16, generator=gen(8))  # rank 4 of 16
    gram = x.T @ x
    gram[5, 5] = -1.0                          # not even PSD
    L, info = whitening(gram, percdamp=0.0)
    assert info["retries"] >= 1 and info["damp"] > 0
    assert torch.isfinite(L).all() and torch.equal(L, torch.tril(L))


def test_whitening_eigh_fallback_floors():
    g = -torch.eye(8)                           # negative definite: damping cannot save it
    L, info = whitening(g, percdamp=0.01)
    assert info["method"] == "eigh" and info["floored"] == 8
    assert torch.isfinite(L).all() and torch.equal(L, torch.tril(L))
    assert (torch.diagonal(L) > 0).all()


def test_whitening_rejects_nan():
    g = torch.eye(4)
    g[0, 1] = float("nan")
    with pytest.raises(ValueError):
        whitening(g)


# --- weighted truncations --------------------------------------------------------------

def test_whitened_truncation_minimizes_output_error():
    g = gen(11)
    w = torch.randn(48, 32, generator=g)
    x = torch.randn(300, 32, generator=g) @ torch.randn(32, 32, generator=g)
    gram = x.T @ x
    L, _ = whitening(gram, percdamp=0.0)
    A, B = whitened_truncation(w, L, 8)
    U, S, Vh = truncated_svd(w, 8)
    A0, B0 = lowrank_factors(U, S, Vh, torch.float32)

    def out_err(dw):
        return float(torch.trace(dw.double() @ gram.double() @ dw.double().T))
    assert out_err(w - B @ A) < 0.9 * out_err(w - B0 @ A0)


def test_whitened_truncation_identity_gram_is_svd():
    w = torch.randn(24, 16, generator=gen(12))
    L, _ = whitening(torch.eye(16) * 3.0, percdamp=0.0)
    A, B = whitened_truncation(w, L, 5)
    U, S, Vh = truncated_svd(w, 5)
    assert torch.allclose(B @ A, U @ torch.diag(S) @ Vh, atol=1e-5)


def test_weighted_truncation_undoes_weights():
    w = low_rank_matrix(30, 20, 3, seed=13)
    rw = torch.rand(30, generator=gen(14)) + 0.1
    cw = torch.rand(20, generator=gen(15)) + 0.1
    A, B = weighted_truncation_rows_cols(w, rw, cw, rank=3)
    assert torch.allclose(B @ A, w, atol=1e-4)            # exact rank: weights cancel
    w2 = torch.randn(30, 20, generator=gen(16))
    A, B = weighted_truncation_rows_cols(w2, row_weights=rw, rank=4)
    U, S, Vh = truncated_svd(rw[:, None] * w2, 4)
    assert torch.allclose(rw[:, None] * (B @ A), U @ torch.diag(S) @ Vh, atol=1e-4)
    with pytest.raises(ValueError):
        weighted_truncation_rows_cols(w2, col_weights=torch.zeros(20), rank=4)


def test_positive_weights_floors_zeros():
    v, n = positive_weights(torch.tensor([0.0, 1.0, 2.0, 0.0]))
    assert n == 2 and (v > 0).all() and v[1] == 1.0
    v, n = positive_weights(torch.zeros(3))
    assert n == 3 and torch.equal(v, torch.ones(3, dtype=torch.float64))


# --- allocation ------------------------------------------------------------------------

def test_uniform_ranks():
    r = uniform_ranks({"a": (576, 576), "b": (64, 96)}, 0.2)
    assert r == {"a": 230, "b": rank_from_ratio(64, 96, 0.2)}


def planted(m, n, k, seed, noise=1e-3):
    return low_rank_matrix(m, n, k, seed) + noise * torch.randn(m, n, generator=gen(seed + 100))


def test_welore_meets_budget_and_ranks_by_tail():
    weights = {"low": planted(64, 96, 4, 0), "rand": torch.randn(64, 96, generator=gen(1)),
               "low2": planted(48, 64, 6, 2), "rand2": torch.randn(48, 32, generator=gen(3))}
    dims = {k: tuple(v.shape) for k, v in weights.items()}
    total = sum(m * n for m, n in dims.values())
    for ratio in (0.3, 0.5, 0.7):
        ranks, info = welore_ranks(weights, ratio)
        budget = int((1 - ratio) * total + 1e-6)
        kept = sum(m * n if ranks[k] is None else ranks[k] * (m + n) for k, (m, n) in dims.items())
        assert kept == info["kept_params"] <= budget
        growable = [m + n for k, (m, n) in dims.items() if ranks[k] is not None]
        assert budget - kept < max(growable)             # within one rank step
        assert set(info["lrc"]) | set(info["n_lrc"]) == set(weights)
        for k, (m, n) in dims.items():
            assert ranks[k] is None or 1 <= ranks[k] and ranks[k] * (m + n) < m * n
        assert ranks["low"] is not None
        assert ranks["rand"] is None or ranks["rand"] > ranks["low"]
    ranks, info = welore_ranks(weights, 0.5)
    assert ranks["low"] < ranks["rand"] if ranks["rand"] else True
    assert ranks["low"] >= 4 and ranks["low2"] >= 6   # the planted components are all kept


def test_welore_accepts_singular_values_and_rejects_impossible_budget():
    w = {"a": torch.randn(20, 30, generator=gen(4)), "b": planted(30, 30, 2, 5)}
    sv = {k: singular_values(v) for k, v in w.items()}
    shapes = {k: tuple(v.shape) for k, v in w.items()}
    assert welore_ranks(sv, 0.4, shapes=shapes)[0] == welore_ranks(w, 0.4)[0]
    with pytest.raises(ValueError, match="cannot be met"):
        welore_ranks(w, 0.99)
    with pytest.raises(ValueError):
        welore_ranks(w, 1.0)


def test_welore_ratio_zero_keeps_everything_dense():
    w = {"a": torch.randn(20, 30, generator=gen(6))}
    ranks, info = welore_ranks(w, 0.0)
    assert ranks == {"a": None} and info["n_lrc"] == ["a"]


@pytest.mark.parametrize("n,leaf", [(5, 256), (300, 64), (517, 128)])
def test_lower_triangular_inverse_is_the_inverse(n: int, leaf: int) -> None:
    from compressor.primitives.linalg import lower_triangular_inverse
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n + 20, n, generator=g, dtype=torch.float64)
    L = torch.linalg.cholesky(x.T @ x + torch.eye(n, dtype=torch.float64))
    inv = lower_triangular_inverse(L, leaf)
    assert torch.equal(inv, torch.tril(inv))
    torch.testing.assert_close(inv @ L, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-10)
