"""Known-answer tests for compressor/quant.py (small tensors, CPU)."""

from __future__ import annotations

import pytest
import torch

from compressor.methods.gptq.solver import gptq_quantize
from compressor.primitives.grids import (
    dequantize,
    dequantize_nf,
    group_index,
    n_groups,
    nf_absmax_from_double_quant,
    nf_levels,
    quantize_nf,
    quantize_rtn,
    scale_zero,
)
from compressor.primitives.masks import magnitude_mask, n_m_mask
from compressor.primitives.packing import pack_bits, unpack_bits

# QLoRA's NF4 table (bitsandbytes / the paper's appendix).
NF4_QLORA = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
             -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
             0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
             0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed))


def _correlated_gram(n: int, tokens: int = 1024, seed: int = 1) -> torch.Tensor:
    z = _randn(tokens, n, seed=seed)
    m = _randn(n, n, seed=seed + 1)
    x = z @ m                      # strongly correlated input channels
    return x.T @ x


def _out_err(w: torch.Tensor, wq: torch.Tensor, gram: torch.Tensor) -> float:
    d = (wq - w).double()
    return float(torch.trace(d @ gram.double() @ d.T))


def _naive_gptq(w: torch.Tensor, gram: torch.Tensor, bits: int, sym: bool,
                percdamp: float) -> torch.Tensor:
    """Textbook OBQ-order GPTQ, per-row grid, explicit inverse downdate: the reference."""
    W = w.double().clone()
    n = W.shape[1]
    H = gram.double().clone()
    H += percdamp * torch.diagonal(H).mean() * torch.eye(n, dtype=H.dtype)
    Hinv = torch.linalg.inv(H)
    s, z = scale_zero(W.float(), bits, sym)
    s, z = s.double()[:, None], z.double()[:, None]
    codes = torch.zeros_like(W)
    for j in range(n):
        c = torch.clamp(torch.round(W[:, j:j + 1] / s) + z, 0, 2 ** bits - 1)
        codes[:, j:j + 1] = c
        err = (W[:, j:j + 1] - (c - z) * s) / Hinv[j, j]
        W[:, j + 1:] -= err * Hinv[j:j + 1, j + 1:]
        Hinv = Hinv - Hinv[:, j:j + 1] @ Hinv[j:j + 1, :] / Hinv[j, j]
    return codes


# ---------------------------------------------------------------------------- packing
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [1, 3, 7, 8, 9, 61, 1000])
def test_pack_unpack_round_trip(bits: int, n: int) -> None:
    codes = torch.randint(0, 2 ** bits, (n,), generator=_gen(bits * 1000 + n),
                          dtype=torch.int64).to(torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == -(-n * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, n), codes)


@pytest.mark.parametrize("in_f,group", [(576, 128), (512, 128), (96, 0), (100, 7)])
def test_dequantize_is_the_per_column_formula(in_f: int, group: int) -> None:
    # equal groups, a shorter last group (576 = 4·128 + 64), one group per row, many ragged
    g = _gen(in_f + group)
    q = quantize_rtn(torch.randn(6, in_f, generator=g), 3, group, False)
    gidx = group_index(in_f, group)
    ref = (q.codes.float() - q.zero[:, gidx]) * q.scale[:, gidx]
    assert torch.equal(dequantize(q), ref)


def test_pack_layout_is_little_endian_bitstream() -> None:
    # 3-bit codes 1, 2, 7 -> bits 001 010 111 (LSB first) = 0b1_010_001, 0b11
    packed = pack_bits(torch.tensor([1, 2, 7], dtype=torch.uint8), 3)
    assert packed.tolist() == [0b11010001, 0b1]


def test_pack_rejects_bad_bits() -> None:
    with pytest.raises(ValueError):
        pack_bits(torch.zeros(4, dtype=torch.uint8), 9)


# ---------------------------------------------------------------------------- uniform
@pytest.mark.parametrize("sym", [False, True])
def test_rtn_8bit_near_lossless(sym: bool) -> None:
    w = _randn(64, 96)
    q = quantize_rtn(w, 8, 32, sym)
    rel = (dequantize(q) - w).norm() / w.norm()
    assert rel < 1e-2
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) <= 255


@pytest.mark.parametrize("sym", [False, True])
def test_rtn_error_bounded_by_half_step(sym: bool) -> None:
    w = _randn(32, 64)
    q = quantize_rtn(w, 4, 16, sym)
    err = (dequantize(q) - w).abs()
    step = q.scale[:, torch.arange(64) // 16]
    assert bool((err <= 0.51 * step).all())       # half a step (+ float16 scale rounding)


def test_sym_zero_point_and_grid() -> None:
    q = quantize_rtn(_randn(8, 40), 3, 8, sym=True)
    assert torch.equal(q.zero, torch.full_like(q.zero, 4.0))
    # a weight of exactly 0 dequantizes to exactly 0
    q0 = quantize_rtn(torch.zeros(2, 8), 3, 8, sym=False)
    assert torch.equal(dequantize(q0), torch.zeros(2, 8))


def test_ragged_groups_use_their_own_scale() -> None:
    w = _randn(16, 576)
    w[:, 512:] *= 100.0                  # the ragged last group (64 columns) is much larger
    q = quantize_rtn(w, 4, 128, sym=False)
    assert n_groups(576, 128) == 5 and q.scale.shape == (16, 5)
    last = w[:, 512:]
    expect = (torch.maximum(last.amax(1), torch.zeros(16))
              - torch.minimum(last.amin(1), torch.zeros(16))) / 15
    assert torch.allclose(q.scale[:, 4], expect.half().float())
    d = dequantize(q)
    # the last group's dequantized values come from the last group's scale and zero
    manual = (q.codes[:, 512:].float() - q.zero[:, 4:5]) * q.scale[:, 4:5]
    assert torch.equal(d[:, 512:], manual)
    assert float(((d - w)[:, 512:].abs() / q.scale[:, 4:5]).max()) <= 0.5 + 1e-3
    # group 3 (columns 384..511) is full and untouched by the large last group
    assert float(q.scale[:, 3].max()) < float(q.scale[:, 4].min())


def test_per_row_group_and_oversized_group() -> None:
    w = _randn(4, 50)
    for gs in (-1, 0, 64):
        q = quantize_rtn(w, 4, gs)
        assert q.scale.shape == (4, 1)


def test_mask_excluded_from_scale() -> None:
    w = _randn(8, 32)
    ref = quantize_rtn(w, 4, 16)
    spiked = w.clone()
    spiked[3, 5] = 1e4
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[3, 5] = True
    q = quantize_rtn(spiked, 4, 16, mask=mask)
    assert torch.equal(q.scale, ref.scale) and torch.equal(q.zero, ref.zero)
    d = dequantize(q)
    assert float(d[3, 5]) == 0.0                      # zero-point code at the masked entry
    assert float(q.outliers[3, 5]) == 1e4 and int((q.outliers != 0).sum()) == 1
    assert torch.allclose((d + q.outliers)[mask], spiked[mask])


def test_bad_bits_raise_user_error() -> None:
    with pytest.raises(ValueError):
        quantize_rtn(_randn(4, 8), 1)
    with pytest.raises(ValueError):
        gptq_quantize(_randn(4, 8), torch.eye(8), 9)


# ---------------------------------------------------------------------------- GPTQ
@pytest.mark.parametrize("bits,gs,sym,act_order",
                         [(4, 32, False, False), (3, 32, True, False), (2, -1, False, False),
                          (3, 24, False, True), (4, 32, True, True)])
def test_gptq_beats_rtn_on_correlated_inputs(bits: int, gs: int, sym: bool,
                                             act_order: bool) -> None:
    w = _randn(48, 96, seed=3)
    gram = _correlated_gram(96)
    rtn = dequantize(quantize_rtn(w, bits, gs, sym))
    q, info = gptq_quantize(w, gram, bits, gs, sym, blocksize=40, act_order=act_order)
    assert _out_err(w, dequantize(q), gram) < 0.8 * _out_err(w, rtn, gram)
    assert info["retries"] == 0 and info["damp"] > 0 and info["dead_columns"] == 0


def test_gptq_matches_textbook_reference() -> None:
    w = _randn(12, 20, seed=5)
    gram = _correlated_gram(20, tokens=200)
    q, _ = gptq_quantize(w, gram, 3, -1, False, percdamp=0.01, blocksize=7)
    ref = _naive_gptq(w, gram, 3, False, 0.01)
    assert torch.equal(q.codes.double(), ref)


def test_gptq_blocksize_does_not_change_result() -> None:
    w = _randn(16, 64, seed=7)
    gram = _correlated_gram(64, tokens=300)
    a, _ = gptq_quantize(w, gram, 3, 24, blocksize=64)
    b, _ = gptq_quantize(w, gram, 3, 24, blocksize=5)
    assert (a.codes != b.codes).float().mean() < 0.01    # equal up to float rounding ties
    assert torch.allclose(a.scale, b.scale, rtol=1e-3)


def test_gptq_act_order_groups_static_and_contiguous() -> None:
    w = _randn(16, 64, seed=8)
    gram = _correlated_gram(64, tokens=300)
    q, _ = gptq_quantize(w, gram, 4, 16, act_order=True)
    static = quantize_rtn(w, 4, 16)
    assert torch.equal(q.scale, static.scale) and torch.equal(q.zero, static.zero)


def test_gptq_static_groups_use_the_original_grid_and_still_beat_rtn() -> None:
    w = _randn(16, 64, seed=9)
    gram = _correlated_gram(64, tokens=300)
    q, _ = gptq_quantize(w, gram, 3, 16, static_groups=True)
    dynamic, _ = gptq_quantize(w, gram, 3, 16)
    static = quantize_rtn(w, 3, 16)
    assert torch.equal(q.scale, static.scale) and torch.equal(q.zero, static.zero)
    assert not torch.equal(dynamic.scale, static.scale)       # the paper's way differs
    rtn_err = _out_err(w, dequantize(static), gram)
    assert _out_err(w, dequantize(q), gram) < 0.8 * rtn_err


def test_gptq_dead_column_no_nan() -> None:
    w = _randn(16, 32, seed=9)
    x = _randn(200, 32, seed=10)
    x[:, 7] = 0.0
    x[:, 20] = 0.0
    gram = x.T @ x
    for act_order in (False, True):
        q, info = gptq_quantize(w, gram, 4, 8, act_order=act_order)
        d = dequantize(q)
        assert bool(torch.isfinite(d).all())
        assert info["dead_columns"] == 2
        # dead columns are plain RTN on their group's grid
        assert float((d - w)[:, 7].abs().max()) <= 0.5 * float(q.scale[:, 0].max()) + 1e-6


def test_gptq_all_zero_gram_no_nan() -> None:
    q, info = gptq_quantize(_randn(4, 8), torch.zeros(8, 8), 4, 4)
    assert bool(torch.isfinite(dequantize(q)).all()) and info["dead_columns"] == 8


def test_gptq_retries_on_indefinite_gram() -> None:
    gram = torch.eye(8)
    gram[0, 1] = gram[1, 0] = 2.0                   # eigenvalue -1: needs damping >= 1
    q, info = gptq_quantize(_randn(4, 8), gram, 4, 4)
    assert info["retries"] >= 1
    assert bool(torch.isfinite(dequantize(q)).all())


def test_gptq_nan_gram_is_user_error() -> None:
    gram = torch.eye(8)
    gram[1, 2] = float("nan")
    with pytest.raises(ValueError):
        gptq_quantize(_randn(4, 8), gram, 4, 4)


def test_gptq_mask_entries_kept_exactly() -> None:
    w = _randn(16, 48, seed=11)
    gram = _correlated_gram(48, tokens=300)
    mask = torch.rand(16, 48, generator=_gen(12)) < 0.05
    w[mask] *= 50.0
    q, _ = gptq_quantize(w, gram, 3, 16, mask=mask)
    d = dequantize(q)
    assert bool((d[mask] == 0).all()) and bool((q.outliers[~mask] == 0).all())
    full = d + q.outliers
    plain, _ = gptq_quantize(w, gram, 3, 16)
    assert _out_err(w, full, gram) < 0.5 * _out_err(w, dequantize(plain), gram)
    # masked entries are excluded from the grid: no scale is inflated by a 50x outlier
    assert float(q.scale.max()) < 0.5 * float(plain.scale.max())


# ---------------------------------------------------------------------------- NF
def test_nf4_levels_match_qlora() -> None:
    assert torch.allclose(nf_levels(4), torch.tensor(NF4_QLORA), atol=1e-4)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_nf_levels_shape(bits: int) -> None:
    lv = nf_levels(bits)
    assert lv.numel() == 2 ** bits and float(lv[0]) == -1.0 and float(lv[-1]) == 1.0
    assert bool((lv.diff() > 0).all()) and 0.0 in lv.tolist()


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_nf_codes_round_trip(bits: int) -> None:
    w = _randn(24, 40, seed=bits)
    q = quantize_nf(w, bits, block_size=64)        # 960 = 15 blocks of 64
    d = dequantize_nf(q)
    q2 = quantize_nf(d, bits, block_size=64)
    assert torch.equal(q2.codes, q.codes) and torch.allclose(q2.absmax, q.absmax)
    assert torch.equal(dequantize_nf(q2), d)


def test_nf_blocks_and_ragged_tail() -> None:
    w = _randn(5, 13, seed=4)                            # 65 = 1 full block of 64 + 1
    q = quantize_nf(w, 4, block_size=64)
    assert q.absmax.shape == (2,)
    assert float(q.absmax[1]) == float(w.reshape(-1)[64].abs())
    assert float(q.absmax[0]) == float(w.reshape(-1)[:64].abs().max())
    rel = (dequantize_nf(q) - w).norm() / w.norm()
    assert rel < 0.15
    # the decoder is the per-element formula level[code] · absmax[block of the element]
    per = q.absmax[torch.arange(65) // 64]
    ref = (nf_levels(4, w.device)[q.codes.reshape(-1).long()] * per).view(5, 13)
    assert torch.equal(dequantize_nf(q), ref)


def test_nf_double_quant() -> None:
    w = _randn(64, 600, seed=6)                          # 600 blocks -> 3 second-level scales
    q = quantize_nf(w, 4, block_size=64, double_quant=True)
    assert q.absmax_codes.dtype == torch.int8 and q.absmax_scale.shape == (3,)
    exact = quantize_nf(w, 4, block_size=64).absmax
    assert float(((q.absmax - exact).abs() / exact).max()) < 0.02
    again = nf_absmax_from_double_quant(q.absmax_codes, q.absmax_scale, q.absmax_offset)
    assert torch.equal(again, q.absmax)
    rel = (dequantize_nf(q) - w).norm() / w.norm()
    assert rel < 0.12


# ---------------------------------------------------------------------------- pruning
def test_magnitude_mask_per_row() -> None:
    w = _randn(10, 40)
    m = magnitude_mask(w, 0.25)
    assert bool((m.sum(1) == 30).all())
    # every kept entry is at least as large as every pruned one in its row
    kept_min = torch.where(m, w.abs(), torch.full_like(w, float("inf"))).amin(1)
    pruned_max = torch.where(~m, w.abs(), torch.zeros_like(w)).amax(1)
    assert bool((kept_min >= pruned_max).all())
    assert bool(magnitude_mask(w, 0.0).all()) and not bool(magnitude_mask(w, 1.0).any())


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_n_m_mask_exact(n: int, m: int) -> None:
    w = _randn(12, 32)
    mask = n_m_mask(w, n, m)
    assert bool((mask.view(12, -1, m).sum(2) == n).all())
    kept = w.abs().view(12, -1, m).where(mask.view(12, -1, m), torch.tensor(float("inf")))
    dropped = w.abs().view(12, -1, m).where(~mask.view(12, -1, m), torch.tensor(0.0))
    assert bool((kept.amin(2) >= dropped.amax(2)).all())


def test_n_m_mask_uses_score() -> None:
    w = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    score = torch.tensor([[0.0, 0.0, 5.0, 6.0]])
    assert n_m_mask(w, 2, 4, score=score).tolist() == [[False, False, True, True]]
    with pytest.raises(ValueError):
        n_m_mask(torch.ones(2, 6), 2, 4)
