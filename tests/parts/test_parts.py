"""Quantized / sparse parts and the rtn, gptq, prune methods (small tensors, CPU)."""

from __future__ import annotations

import pytest
import torch

from compressor.core.registry import get_method
from compressor.core.types import LinearStats, Target
from compressor.errors import UserError
from compressor.methods.gptq.solver import gptq_quantize
from compressor.parts import PART_TYPES, CompressedLinear
from compressor.parts.quantized import NFQuantPart, UniformQuantPart
from compressor.parts.sparse import SparsePart
from compressor.primitives.grids import (
    dequantize,
    dequantize_nf,
    n_groups,
    quantize_nf,
    quantize_rtn,
)
from compressor.primitives.masks import magnitude_mask, n_m_mask


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed))


def _reload(part: torch.nn.Module, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """spec -> empty part -> strict state-dict load: the checkpoint path."""
    empty = PART_TYPES[part.spec()["type"]].from_spec(part.spec(), dtype)
    empty.load_state_dict(part.state_dict(), strict=True)
    return empty


def _target(w: torch.Tensor, gram: torch.Tensor | None = None,
            bias: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> Target:
    return Target(name="model.layers.0.mlp.up_proj", layer_index=0, kind="up_proj", weight=w,
                  bias=bias, stats=LinearStats(ntokens=256, gram=gram), generator=_gen(),
                  dtype=dtype)


def _gram(n: int, seed: int = 1) -> torch.Tensor:
    x = _randn(256, n, seed=seed) @ _randn(n, n, seed=seed + 1)
    return x.T @ x


# ---------------------------------------------------------------------------- uniform part
@pytest.mark.parametrize("bits,gs,sym", [(4, 32, False), (3, 40, True), (2, -1, False),
                                         (8, 128, True)])
def test_uniform_part_round_trip(bits: int, gs: int, sym: bool) -> None:
    w = _randn(24, 100)                                  # 100 % 32 != 0: ragged groups
    q = quantize_rtn(w, bits, gs, sym)
    part = UniformQuantPart.from_quant(q)
    sd = part.state_dict()
    assert sd["qcodes"].dtype == torch.uint8 and sd["qcodes"].numel() == -(-24 * 100 * bits // 8)
    assert sd["scale"].dtype == torch.float16
    assert sd["scale"].shape == (24, n_groups(100, gs))
    assert ("zero" in sd) == (not sym)
    if not sym:
        assert sd["zero"].dtype == torch.uint8
    assert torch.equal(part.dense(), dequantize(q))
    x = _randn(2, 5, 100, seed=3)
    assert torch.allclose(part(x), x @ dequantize(q).T, atol=1e-4)
    again = _reload(part)
    assert torch.equal(again(x), part(x))


def test_uniform_part_forward_keeps_input_dtype() -> None:
    part = UniformQuantPart.from_quant(quantize_rtn(_randn(8, 16), 4, 8))
    assert part(_randn(3, 16).to(torch.bfloat16)).dtype == torch.bfloat16


# ---------------------------------------------------------------------------- NF part
@pytest.mark.parametrize("bits,bs,dq", [(4, 64, False), (3, 32, True), (2, 16, False),
                                        (4, 64, True)])
def test_nf_part_round_trip(bits: int, bs: int, dq: bool) -> None:
    w = _randn(20, 50)                                   # 1000 entries: ragged last block
    q = quantize_nf(w, bits, bs, double_quant=dq)
    part = NFQuantPart.from_quant(q)
    sd = part.state_dict()
    nblocks = -(-1000 // bs)
    if dq:
        assert set(sd) == {"qcodes", "absmax_codes", "absmax_scale", "absmax_offset"}
        assert sd["absmax_codes"].dtype == torch.int8 and sd["absmax_codes"].numel() == nblocks
    else:
        assert set(sd) == {"qcodes", "absmax"} and sd["absmax"].numel() == nblocks
    assert torch.equal(part.dense(), dequantize_nf(q))
    x = _randn(3, 50, seed=4)
    assert torch.equal(_reload(part)(x), part(x))


# ---------------------------------------------------------------------------- sparse part
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sparse_part_forward_and_storage(dtype: torch.dtype) -> None:
    w = _randn(30, 70)
    mask = torch.rand(30, 70, generator=_gen(1)) < 0.2
    mask[5] = False                                      # an empty row
    part = SparsePart.from_dense(w, mask, dtype)
    sd = part.state_dict()
    assert set(sd) == {"values", "crow", "col"}
    assert sd["values"].dtype == dtype and sd["values"].numel() == int(mask.sum())
    assert sd["col"].dtype == torch.int16 and sd["crow"].dtype == torch.int32
    dense = torch.where(mask, w, torch.zeros_like(w)).to(dtype).float()
    assert torch.equal(part.dense(), dense)
    x = _randn(2, 3, 70, seed=2)
    y = part(x)
    assert y.shape == (2, 3, 30)
    assert torch.allclose(y, x @ dense.T, atol=1e-5)
    assert torch.equal(_reload(part, torch.float32)(x), y)    # values keep their dtype


def test_sparse_part_empty_and_wide() -> None:
    empty = SparsePart.from_dense(_randn(4, 6), torch.zeros(4, 6, dtype=torch.bool),
                                  torch.float16)
    assert torch.equal(empty(_randn(3, 6)), torch.zeros(3, 4))
    wide = SparsePart.from_dense(torch.ones(2, 40000), torch.eye(2, 40000, dtype=torch.bool),
                                 torch.float32)
    assert wide.col.dtype == torch.int32


def test_sparse_cpu_forward_does_not_materialize_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    part = SparsePart.from_dense(_randn(8, 12), torch.rand(8, 12, generator=_gen(3)) < 0.3,
                                 torch.float32)
    expect = _randn(5, 12) @ part.dense().T

    def boom(self, dtype):
        raise AssertionError("dense weight built on CPU")
    monkeypatch.setattr(SparsePart, "_scatter", boom)
    assert torch.allclose(part(_randn(5, 12)), expect, atol=1e-5)


# ---------------------------------------------------------------------------- methods
def _method(name: str, **cfg):
    cls = get_method(name)
    return cls(), cls.Config(**cfg)


@pytest.mark.parametrize("cfg", [{}, {"bits": 3, "group_size": 48, "sym": True},
                                 {"bits": 2, "group_size": -1}])
def test_rtn_method(cfg: dict) -> None:
    w, b = _randn(16, 96), _randn(16, seed=5)
    m, c = _method("rtn", **cfg)
    res = m.compress(_target(w, bias=b), c)
    assert isinstance(res.module, CompressedLinear)
    assert [p.type_name for p in res.module.parts] == ["quant"]
    q = quantize_rtn(w, c.bits, c.group_size, c.sym)
    assert torch.equal(res.module.dense_weight(), dequantize(q))
    assert res.info == {"bits": c.bits, "group_size": c.group_size, "sym": c.sym}
    x = _randn(4, 96, seed=6)
    assert torch.allclose(res.module(x), x @ dequantize(q).T + b, atol=1e-4)


def test_rtn_config_rejects_bad_values() -> None:
    cls = get_method("rtn")
    with pytest.raises(Exception):
        cls.Config(bits=9)
    with pytest.raises(Exception):
        cls.Config(bitz=4)


def test_gptq_method() -> None:
    w, g = _randn(16, 64), _gram(64)
    m, c = _method("gptq", bits=3, group_size=32, act_order=True, mse_grid=0)
    assert m.needs == {"gram"}
    res = m.compress(_target(w, g), c)
    q, info = gptq_quantize(w, g, 3, 32, act_order=True)
    assert torch.equal(res.module.dense_weight(), dequantize(q))
    assert res.info["damp"] == info["damp"] and res.info["retries"] == 0
    with pytest.raises(UserError):
        m.compress(_target(w, None), c)


@pytest.mark.parametrize("pattern,score", [("unstructured", "magnitude"), ("2:4", "magnitude"),
                                           ("4:8", "wanda"), ("unstructured", "wanda")])
def test_prune_method(pattern: str, score: str) -> None:
    w, g = _randn(16, 64), _gram(64)
    m, c = _method("prune", sparsity=0.75, pattern=pattern, score=score)
    res = m.compress(_target(w, g, dtype=torch.float16), c)
    part = res.module.parts[0]
    assert part.type_name == "sparse" and part.values.dtype == torch.float16
    s = w.abs() * (g.diagonal().sqrt()[None, :] if score == "wanda" else 1.0)
    mask = (magnitude_mask(s, 0.75) if pattern == "unstructured"
            else n_m_mask(w, *map(int, pattern.split(":")), score=s))
    if score == "wanda":                                 # the activation norms matter
        assert not torch.equal(mask, magnitude_mask(w, 0.75) if pattern == "unstructured"
                               else n_m_mask(w, 4, 8))
    expect = torch.where(mask, w, torch.zeros_like(w)).half().float()
    assert torch.equal(res.module.dense_weight(), expect)
    want = 0.75 if pattern == "unstructured" else 0.5
    assert res.info["sparsity"] == pytest.approx(want)


def test_materialized_decodes_once_and_gives_identical_outputs(monkeypatch):
    """Inside ``materialized`` a packed part decodes its weight once (not per forward) and
    every output is bit-identical; on exit nothing decoded is kept."""
    from compressor.parts.base import CompressedLinear, materialized
    from compressor.parts.lowrank import LowRankPart
    from compressor.parts.quantized import UniformQuantPart
    from compressor.primitives.grids import quantize_rtn
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 40, generator=g)
    quant = UniformQuantPart.from_quant(quantize_rtn(w, 3, 16))
    lin = CompressedLinear(12, 40, [quant, LowRankPart(torch.randn(2, 40, generator=g),
                                                        torch.randn(12, 2, generator=g))])
    xs = [torch.randn(5, 40, generator=g) for _ in range(3)]
    plain = [lin(x) for x in xs]
    calls = []
    real = UniformQuantPart.dense
    monkeypatch.setattr(UniformQuantPart, "dense", lambda self: calls.append(1) or real(self))
    with materialized(lin):
        cached = [lin(x) for x in xs]
    assert len(calls) == 1
    assert all(torch.equal(a, b) for a, b in zip(plain, cached))
    assert quant._decoded is None
    lin(xs[0])
    assert len(calls) == 2           # decoding per call again outside the block
