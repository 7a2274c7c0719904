"""GWQ: exact top-k outliers by |gradient| kept in 16 bit, the rest group-quantized."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from compressor.core.measures import bits_per_weight
from compressor.core.registry import get_method
from compressor.core.types import LinearStats, Target
from compressor.errors import MissingStatistic, UserError
from compressor.methods.gptq.solver import gptq_quantize
from compressor.primitives.grids import dequantize, quantize_rtn

OUT, IN = 64, 96


def make_target(seed: int = 0, grads: bool = True, gram: bool = False,
                dtype: torch.dtype = torch.float16) -> Target:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(OUT, IN, generator=g)
    stats = LinearStats(ntokens=256)
    if grads:  # independent of |W|, so gradient and magnitude picks differ
        stats.grad_absmean = torch.rand(OUT, IN, generator=g) ** 4
        stats.fisher = stats.grad_absmean ** 2
    if gram:
        x = torch.randn(256, IN, generator=g) * torch.linspace(0.2, 3, IN)
        stats.gram = x.T @ x
    return Target(name="model.layers.0.mlp.up_proj", layer_index=0, kind="up_proj", weight=w,
                  bias=torch.randn(OUT, generator=g), stats=stats,
                  generator=torch.Generator().manual_seed(seed), dtype=dtype)


def run(target: Target, **cfg):
    method = get_method("gwq")()
    c = method.Config(**{"group_size": 32, **cfg})
    return method.compress(target, c), c


def topk_set(score: torch.Tensor, k: int) -> set[int]:
    return set(score.reshape(-1).argsort(descending=True)[:k].tolist())


def outlier_positions(module) -> set[int]:
    assert [p.type_name for p in module.parts] == ["quant", "sparse"]
    return set(torch.nonzero(module.parts[1].dense().reshape(-1)).reshape(-1).tolist())


def test_zero_outliers_equals_rtn():
    t = make_target()
    res, _ = run(t, outlier_frac=0.0, bits=3)
    ref = dequantize(quantize_rtn(t.weight, 3, 32, False))
    assert len(res.module.parts) == 1
    assert torch.equal(res.module.dense_weight(), ref)
    assert res.info["outliers"] == 0 and res.info["outlier_frac"] == 0.0


def test_zero_outliers_equals_gptq():
    t = make_target(gram=True)
    res, _ = run(t, outlier_frac=0.0, bits=3, inner="gptq")
    q, _ = gptq_quantize(t.weight, t.stats.gram, 3, 32, False, percdamp=0.01)
    assert torch.equal(res.module.dense_weight(), dequantize(q))


def test_outliers_are_exact_topk_by_gradient():
    t = make_target()
    res, _ = run(t, outlier_frac=0.02)
    k = round(0.02 * OUT * IN)
    assert res.info["outliers"] == k
    assert outlier_positions(res.module) == topk_set(t.stats.grad_absmean, k)
    assert topk_set(t.stats.grad_absmean, k) != topk_set(t.weight.abs(), k)


def test_magnitude_variant_picks_top_abs_w():
    t = make_target()
    res, _ = run(t, outlier_frac=0.02, outlier_score="magnitude")
    k = round(0.02 * OUT * IN)
    assert outlier_positions(res.module) == topk_set(t.weight.abs(), k)


def test_magnitude_needs_no_gradients():
    res, _ = run(make_target(grads=False), outlier_score="magnitude")
    assert res.info["outliers"] == round(0.01 * OUT * IN)
    with pytest.raises(MissingStatistic, match="grad_absmean"):
        run(make_target(grads=False))


@pytest.mark.parametrize("inner", ["rtn", "gptq"])
def test_outlier_error_is_fp16_rounding(inner):
    t = make_target(gram=True)
    res, _ = run(t, outlier_frac=0.05, bits=2, inner=inner)
    dense = res.module.dense_weight()
    mask = torch.zeros(OUT * IN, dtype=torch.bool)
    mask[list(outlier_positions(res.module))] = True
    mask = mask.view(OUT, IN)
    if inner == "rtn":   # outliers keep the original weight
        kept = t.weight
    else:                # GPTQ keeps its error-compensated weight there (zero error propagated)
        q, _ = gptq_quantize(t.weight, t.stats.gram, 2, 32, False, percdamp=0.01, mask=mask)
        kept = q.outliers
    err = (dense - kept)[mask].abs()
    assert float(err.max()) <= float(kept[mask].abs().max()) * 2 ** -11
    # elsewhere: exactly the inner quantizer run with the outliers masked out
    q = (quantize_rtn(t.weight, 2, 32, False, mask=mask) if inner == "rtn" else
         gptq_quantize(t.weight, t.stats.gram, 2, 32, False, percdamp=0.01, mask=mask)[0])
    assert torch.equal(dense[~mask], dequantize(q)[~mask])


def test_outliers_excluded_from_scales():
    """A huge weight with a huge gradient must not stretch its group's grid."""
    t = make_target()
    t.weight[5, 7] = 50.0
    t.stats.grad_absmean[5, 7] = 10.0
    gwq, _ = run(t, outlier_frac=0.01, bits=3)
    plain = dequantize(quantize_rtn(t.weight, 3, 32, False))
    err_gwq = (gwq.module.dense_weight() - t.weight)[5, :32].abs().max()
    err_plain = (plain - t.weight)[5, :32].abs().max()
    assert float(err_gwq) < float(err_plain) / 4


def test_gwq_beats_rtn_and_bits_count_outliers():
    t = make_target()
    res, _ = run(t, outlier_frac=0.01, bits=3)
    rtn = dequantize(quantize_rtn(t.weight, 3, 32, False))
    assert (res.module.dense_weight() - t.weight).norm() < (rtn - t.weight).norm()
    info = res.info
    assert info["bits"] == 3 and info["inner"] == "rtn"
    assert info["outlier_frac"] == pytest.approx(info["outliers"] / (OUT * IN))
    assert bits_per_weight(res.module) > 3
    x = torch.randn(5, IN)
    y = res.module(x)
    assert torch.allclose(y, x @ res.module.dense_weight().T + t.bias, atol=1e-4)


def test_needs_for_and_config():
    cls = get_method("gwq")
    assert cls.needs == {"grad_absmean", "gram"}
    assert cls.needs_for(cls.Config()) == {"grad_absmean"}
    assert cls.needs_for(cls.Config(inner="gptq")) == {"grad_absmean", "gram"}
    assert cls.needs_for(cls.Config(outlier_score="magnitude")) == frozenset()
    with pytest.raises(ValidationError):
        cls.Config(bits=9)
    with pytest.raises(ValidationError):
        cls.Config(outlier_frac=1.0)
    with pytest.raises(ValidationError):
        cls.Config(outliers=0.01)


def test_gradient_shape_mismatch_is_user_error():
    t = make_target()
    t.stats.grad_absmean = t.stats.grad_absmean[:, :10]
    with pytest.raises(UserError, match="another model"):
        run(t)


@pytest.mark.parametrize("dtype,stored", [(torch.float32, torch.float16),
                                          (torch.bfloat16, torch.bfloat16)])
def test_outliers_stored_in_16_bit_and_reload(dtype, stored):
    from compressor.parts.base import CompressedLinear
    t = make_target(dtype=dtype)
    res, _ = run(t, outlier_frac=0.01)
    assert res.module.parts[1].values.dtype == stored
    assert res.info["outlier_dtype"] == str(stored).removeprefix("torch.")
    again = CompressedLinear.from_spec(res.module.spec(), dtype)
    again.load_state_dict(res.module.state_dict(), strict=True)
    assert torch.equal(again.dense_weight(), res.module.dense_weight())
