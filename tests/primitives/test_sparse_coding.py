"""Known-answer tests for batched OMP and K-SVD (compressor/sparse_coding.py)."""

from __future__ import annotations

import pytest
import torch

from compressor.primitives.ksvd import ksvd
from compressor.primitives.sparse_coding import (
    batch_omp,
    dense_codes,
    ls_on_support,
)


def _unit_dictionary(d: int, k: int, g: torch.Generator) -> torch.Tensor:
    D = torch.randn(d, k, generator=g, dtype=torch.float64)
    return D / D.norm(dim=0)


def _planted(d: int, k: int, n: int, s: int, seed: int):
    """Y = D X with random unit atoms and s-sparse codes of magnitude 0.5..1.5."""
    g = torch.Generator().manual_seed(seed)
    D = _unit_dictionary(d, k, g)
    idx = torch.stack([torch.randperm(k, generator=g)[:s] for _ in range(n)])
    mag = 0.5 + torch.rand(n, s, generator=g, dtype=torch.float64)
    sign = torch.randn(n, s, generator=g, dtype=torch.float64).sign()
    X = dense_codes(idx, sign * mag, k)
    return D, X, D @ X.T


def _naive_gomp(D: torch.Tensor, y: torch.Tensor, s: int, block: int):
    """(Generalized) OMP from its definition: add the `block` most correlated atoms a step
    (block=1: OMP)."""
    support: list[int] = []
    r = y.clone()
    while len(support) < s:
        c = (D.T @ r).abs()
        c[support] = -1.0
        support += torch.topk(c, min(block, s - len(support))).indices.tolist()
        sol = torch.linalg.lstsq(D[:, support], y[:, None]).solution[:, 0]
        r = y - D[:, support] @ sol
    return support, sol


def test_omp_recovers_planted_code_exactly():
    D, X, Y = _planted(64, 96, 300, 3, seed=0)
    idx, coef = batch_omp(D, Y, 3)
    assert idx.shape == (300, 3) and idx.dtype == torch.long
    assert torch.allclose(dense_codes(idx, coef, 96), X, atol=1e-10)


@pytest.mark.parametrize("block", [2, 3, 6])
def test_generalized_omp_recovers_codes_over_an_orthonormal_dictionary(block):
    # Orthonormal atoms: correlations are the coefficients, so any block picks true atoms.
    g = torch.Generator().manual_seed(7)
    D = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64)).Q
    idx0 = torch.stack([torch.randperm(32, generator=g)[:6] for _ in range(50)])
    X = dense_codes(idx0, 0.5 + torch.rand(50, 6, generator=g, dtype=torch.float64), 32)
    idx, coef = batch_omp(D, D @ X.T, 6, block=block)
    assert torch.allclose(dense_codes(idx, coef, 32), X, atol=1e-10)


@pytest.mark.parametrize("d,k,n,s,block,seed", [
    (20, 40, 30, 4, 1, 1),                      # classic OMP
    (24, 48, 40, 7, 2, 5), (24, 48, 40, 7, 3, 5), (24, 48, 40, 7, 5, 5),  # ragged last block
])
def test_omp_matches_reference_on_unstructured_signals(d, k, n, s, block, seed):
    g = torch.Generator().manual_seed(seed)
    D = _unit_dictionary(d, k, g)
    Y = torch.randn(d, n, generator=g, dtype=torch.float64)
    idx, coef = batch_omp(D, Y, s, block=block)
    for j in range(n):
        support, sol = _naive_gomp(D, Y[:, j], s, block)
        # within a block the order is by correlation, as topk returns it
        assert idx[j].tolist() == support
        assert torch.allclose(coef[j], sol, atol=1e-9)


def test_generalized_omp_with_dependent_atoms_in_one_block_stays_exact():
    # d = 3, blocks of 4 atoms: every block after the third atom is dependent
    g = torch.Generator().manual_seed(6)
    D = _unit_dictionary(3, 10, g)
    Y = torch.randn(3, 20, generator=g, dtype=torch.float64)
    idx, coef = batch_omp(D, Y, 8, block=4)
    assert torch.isfinite(coef).all()
    assert all(len(set(row)) == 8 for row in idx.tolist())
    assert torch.allclose(D @ dense_codes(idx, coef, 10).T, Y, atol=1e-9)


def test_omp_chunking_does_not_change_the_result():
    g = torch.Generator().manual_seed(2)
    D = _unit_dictionary(16, 24, g)
    Y = torch.randn(16, 50, generator=g, dtype=torch.float64)
    whole = batch_omp(D, Y, 5)
    chunked = batch_omp(D, Y, 5, max_elems=200)   # a few signals per chunk
    assert torch.equal(whole[0], chunked[0]) and torch.allclose(whole[1], chunked[1])


def test_omp_signal_exact_with_fewer_atoms_stays_finite():
    # A zero signal and a single-atom signal asked for s=3 atoms: the extra slots are
    # linearly dependent or useless, and must come back with zero coefficients.
    g = torch.Generator().manual_seed(3)
    D = _unit_dictionary(3, 6, g)
    Y = torch.stack([torch.zeros(3, dtype=torch.float64), 2.0 * D[:, 4],
                     torch.randn(3, generator=g, dtype=torch.float64)], dim=1)
    idx, coef = batch_omp(D, Y, 3)
    assert torch.isfinite(coef).all()
    assert torch.equal(coef[0], torch.zeros(3, dtype=torch.float64))
    assert idx[1, 0] == 4 and torch.allclose(coef[1], torch.tensor([2.0, 0, 0],
                                                                    dtype=torch.float64))
    assert torch.allclose(D @ dense_codes(idx, coef, 6).T, Y, atol=1e-10)  # d=3: exact


def test_ls_on_support_is_least_squares():
    g = torch.Generator().manual_seed(4)
    D = _unit_dictionary(12, 20, g)
    Y = torch.randn(12, 7, generator=g, dtype=torch.float64)
    idx = torch.stack([torch.randperm(20, generator=g)[:4] for _ in range(7)])
    coef = ls_on_support(D, Y, idx)
    for n in range(7):
        ref = torch.linalg.lstsq(D[:, idx[n]], Y[:, n:n + 1]).solution[:, 0]
        assert torch.allclose(coef[n], ref, atol=1e-9)


def test_ls_on_support_with_a_float32_singular_gram_falls_back_to_float64(monkeypatch):
    # atoms 0 and 1 differ by 1e-3: their Gram is near-singular in float32 (the Cholesky fails
    # or the refinement stalls) but solvable in float64; the result must be the float64 fit
    import compressor.primitives.sparse_coding as sc
    g = torch.Generator().manual_seed(8)
    D = _unit_dictionary(10, 6, g)
    D[:, 1] = D[:, 0] + 1e-3 * torch.randn(10, generator=g, dtype=torch.float64)
    D = D / D.norm(dim=0)
    Y = torch.randn(10, 5, generator=g, dtype=torch.float64)
    idx = torch.tensor([[0, 1, 2]] * 5)
    calls = []
    orig = sc._support_lstsq
    monkeypatch.setattr(sc, "_support_lstsq", lambda *a: calls.append(1) or orig(*a))
    coef = ls_on_support(D, Y, idx)
    assert calls, "the float64 fallback was not used"
    for n in range(5):
        ref = torch.linalg.lstsq(D[:, idx[n]], Y[:, n:n + 1]).solution[:, 0]
        # the fallback's relative 1e-10 ridge moves the fit by ~1e-5 here, no more
        best = torch.linalg.vector_norm(Y[:, n] - D[:, idx[n]] @ ref)
        got = torch.linalg.vector_norm(Y[:, n] - D[:, idx[n]] @ coef[n])
        assert got <= best + 1e-8


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ksvd_learns_planted_dictionary(seed):
    # Incoherent, undercomplete planted problem: K-SVD (a local method) solves this size
    # reliably; denser or overcomplete planted problems can stall with one mixed atom.
    D_true, _, Y = _planted(64, 8, 600, 2, seed=100 + seed)
    D, idx, coef, info = ksvd(Y, 8, 2, 25, torch.Generator().manual_seed(seed))
    assert info["final_rel_error"] < 1e-3
    assert info["rel_errors"][0] > 1e-2            # the start was not already the answer
    assert len(info["rel_errors"]) == 26
    rec = D @ dense_codes(idx, coef, 8).T
    assert (rec - Y).norm() / Y.norm() < 1e-3
    assert torch.allclose(D.norm(dim=0), torch.ones(8, dtype=torch.float64))
    # every true atom recovered up to sign
    assert ((D.T @ D_true).abs().max(dim=0).values > 0.999).all()


def test_ksvd_is_deterministic_given_the_generator():
    _, _, Y = _planted(24, 30, 200, 3, seed=7)
    a = ksvd(Y, 30, 3, 4, torch.Generator().manual_seed(11))
    b = ksvd(Y, 30, 3, 4, torch.Generator().manual_seed(11))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert a[3] == b[3]


def test_ksvd_never_ends_worse_than_its_start_and_accepts_init():
    g = torch.Generator().manual_seed(5)
    Y = torch.randn(16, 80, generator=g, dtype=torch.float64)
    init = torch.randn(16, 12, generator=g, dtype=torch.float64)
    init[:, 3] = 0.0                                  # a dead column gets a random atom
    D, idx, coef, info = ksvd(Y, 12, 3, 5, torch.Generator().manual_seed(0), init=init)
    assert torch.isfinite(D).all() and torch.allclose(D.norm(dim=0),
                                                      torch.ones(12, dtype=torch.float64))
    assert info["final_rel_error"] < info["rel_errors"][0]


def test_ksvd_rejects_impossible_sparsity():
    Y = torch.randn(4, 10, dtype=torch.float64)
    with pytest.raises(ValueError):
        ksvd(Y, 6, 5, 1, torch.Generator().manual_seed(0))   # s > d
    with pytest.raises(ValueError):
        batch_omp(torch.eye(4, dtype=torch.float64), Y, 5)   # s > k
