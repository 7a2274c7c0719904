"""Low-rank methods end to end on one small linear: svd, asvd, whitened-svd, fwsvd, welore."""

import pytest
import torch
from pydantic import ValidationError

from compressor.core.registry import REGISTRY
from compressor.core.types import LinearStats, Target
from compressor.errors import UserError
from compressor.parts.lowrank import DensePart, LowRankPart
from compressor.primitives.allocation import welore_ranks
from compressor.primitives.linalg import lowrank_factors, truncated_svd

M, N = 48, 64



def fisher_sums(F: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reduced Fisher statistics FWSVD takes, from a full (out, in) Fisher."""
    return {"fisher_rows": F.sum(dim=1), "fisher_cols": F.sum(dim=0)}

def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def make_target(w, name="model.layers.0.mlp.up_proj", stats=None, plan=None,
                dtype=torch.float32, bias=None, seed=0):
    return Target(name=name, layer_index=0, kind=name.rsplit(".", 1)[-1], weight=w,
                  bias=bias, stats=stats or LinearStats(), generator=gen(seed), dtype=dtype,
                  plan=plan or {})


def calib_stats(w, seed=1, tokens=400):
    g = gen(seed)
    x = torch.randn(tokens, w.shape[1], generator=g) * torch.linspace(0.05, 3.0, w.shape[1])
    x = x @ (torch.eye(w.shape[1]) + 0.3 * torch.randn(w.shape[1], w.shape[1], generator=g))
    return LinearStats(ntokens=tokens, gram=x.T @ x, act_absmean=x.abs().mean(0))


def run(name, target, **cfg):
    method = REGISTRY[name]()
    return method.compress(target, method.Config(**cfg))


def svd_weight(w, rank):
    U, S, Vh = truncated_svd(w, rank)
    A, B = lowrank_factors(U, S, Vh, torch.float32)
    return B @ A


def test_svd_output_and_info():
    w = torch.randn(M, N, generator=gen(0))
    b = torch.randn(M, generator=gen(1))
    out = run("svd", make_target(w, bias=b, dtype=torch.float16), ratio=0.5)
    k = int(0.5 * M * N / (M + N))
    (part,) = out.module.parts
    assert isinstance(part, LowRankPart) and part.rank == k
    assert part.A.dtype == part.B.dtype == torch.float16
    assert out.info["rank"] == k and out.info["kept_params"] == k * (M + N)
    assert torch.allclose(out.module.dense_weight(), svd_weight(w, k), atol=2e-2)
    x = torch.randn(5, N, generator=gen(2))
    y = out.module(x)
    assert torch.allclose(y, x @ out.module.dense_weight().T + b, atol=2e-2)


def test_explicit_rank_overrides_ratio():
    w = torch.randn(M, N, generator=gen(0))
    out = run("svd", make_target(w), ratio=0.9, rank=7)
    assert out.info["rank"] == 7


def test_rank_without_saving_is_refused():
    w = torch.randn(M, N, generator=gen(0))
    largest = (M * N - 1) // (M + N)
    out = run("svd", make_target(w), rank=largest)
    assert out.info["rank"] == largest
    with pytest.raises(UserError, match=rf"up_proj.*<= {largest}"):
        run("svd", make_target(w), rank=largest + 1)
    w_sq = torch.randn(32, 32, generator=gen(0))   # rank 16: 16*(64) == 1024, no saving
    with pytest.raises(UserError, match="no saving"):
        run("svd", make_target(w_sq), rank=16)
    with pytest.raises(ValidationError):           # ratio 0 removes nothing: refused up front
        REGISTRY["svd"].Config(ratio=0.0)


def test_bad_config_is_rejected():
    with pytest.raises(ValidationError):
        REGISTRY["svd"].Config(ratio=1.2)
    with pytest.raises(ValidationError):
        REGISTRY["svd"].Config(ranks=3)          # typo: extra="forbid"
    with pytest.raises(ValidationError):
        REGISTRY["fwsvd"].Config(axis="diag")


@pytest.mark.parametrize("name", ["svd", "asvd", "whitened-svd", "fwsvd"])
def test_randomized_is_seeded_and_exact_on_low_rank(name):
    g = gen(3)
    w = torch.randn(M, 5, generator=g) @ torch.randn(5, N, generator=g)
    stats = calib_stats(w)
    F = torch.rand(M, N, generator=g)
    stats.fisher_rows, stats.fisher_cols = F.sum(1), F.sum(0)
    outs = [run(name, make_target(w, stats=stats, seed=s), rank=5, svd_method="randomized")
            for s in (4, 4)]
    assert torch.equal(outs[0].module.parts[0].A, outs[1].module.parts[0].A)
    assert torch.allclose(outs[0].module.dense_weight(), w, atol=1e-4 * w.abs().max())


def test_asvd_alpha_zero_equals_svd():
    w = torch.randn(M, N, generator=gen(5))
    stats = calib_stats(w)
    a0 = run("asvd", make_target(w, stats=stats), rank=10, alpha=0.0).module.dense_weight()
    assert torch.allclose(a0, svd_weight(w, 10), atol=1e-5)
    a5 = run("asvd", make_target(w, stats=stats), rank=10, alpha=0.5).module.dense_weight()
    assert not torch.allclose(a5, a0, atol=1e-3)   # the scaling does change the result


def test_asvd_dead_channel_is_floored():
    w = torch.randn(M, N, generator=gen(5))
    stats = calib_stats(w)
    stats.act_absmean[7] = 0.0
    out = run("asvd", make_target(w, stats=stats), rank=10)
    assert out.info["floored_channels"] == 1
    assert torch.isfinite(out.module.dense_weight()).all()


def output_error(w, w_hat, gram):
    dw = (w - w_hat).double()
    return float(torch.trace(dw @ gram.double() @ dw.T))


def test_whitened_svd_beats_svd_on_output_error():
    w = torch.randn(M, N, generator=gen(6))
    stats = calib_stats(w)
    out = run("whitened-svd", make_target(w, stats=stats), rank=12)
    e_white = output_error(w, out.module.dense_weight(), stats.gram)
    e_svd = output_error(w, svd_weight(w, 12), stats.gram)
    assert e_white <= e_svd
    assert e_white < 0.9 * e_svd
    assert out.info["damp"] > 0 and out.info["whitening"] == "cholesky"


def test_whitened_svd_dead_channel_no_nan():
    w = torch.randn(M, N, generator=gen(7))
    stats = calib_stats(w)
    stats.gram[:, 3] = 0.0
    stats.gram[3, :] = 0.0
    out = run("whitened-svd", make_target(w, stats=stats), rank=12, percdamp=0.0)
    assert torch.isfinite(out.module.dense_weight()).all()
    assert out.info["damp"] > 0 and out.info["damp_retries"] >= 1
    assert out.info["dead_channels"] == 1


@pytest.mark.parametrize("axis", ["rows", "cols", "both"])
def test_fwsvd_uniform_fisher_equals_svd(axis):
    w = torch.randn(M, N, generator=gen(8))
    stats = LinearStats(ntokens=10, **fisher_sums(torch.full((M, N), 0.37)))
    out = run("fwsvd", make_target(w, stats=stats), rank=9, axis=axis)
    assert torch.allclose(out.module.dense_weight(), svd_weight(w, 9), atol=1e-5)
    assert out.info["axis"] == axis and out.info["fisher_floored"] == 0


def test_fwsvd_weights_important_rows():
    w = torch.randn(M, N, generator=gen(9))
    fisher = torch.ones(M, N)
    fisher[:8] = 100.0                        # the first 8 output rows matter most
    fisher[20] = 0.0                          # a row with no gradient signal
    out = run("fwsvd", make_target(w, stats=LinearStats(**fisher_sums(fisher))), rank=6)
    wf = out.module.dense_weight()
    assert out.info["fisher_floored"] == 1 and torch.isfinite(wf).all()
    err_fw = (w - wf)[:8].norm()
    err_svd = (w - svd_weight(w, 6))[:8].norm()
    assert err_fw < 0.7 * err_svd


def lr_and_random(seed=10):
    g = gen(seed)
    low = torch.randn(M, 3, generator=g) @ torch.randn(3, N, generator=g) \
        + 1e-3 * torch.randn(M, N, generator=g)
    return {"model.layers.0.self_attn.q_proj": low,
            "model.layers.0.mlp.up_proj": torch.randn(M, N, generator=g),
            "model.layers.0.mlp.down_proj": torch.randn(N, M, generator=g)}


def compress_planned(name, weights, stats=None, **cfg):
    method = REGISTRY[name]()
    config = method.Config(**cfg)
    plan = method.plan(weights, config)
    return plan, {k: method.compress(make_target(w, name=k, stats=stats, plan=plan.get(k)),
                                     config) for k, w in weights.items()}


def test_welore_method_plans_and_keeps_n_lrc_dense():
    weights = lr_and_random()
    plan, outs = compress_planned("welore", weights, ratio=0.5)
    total = sum(w.numel() for w in weights.values())
    kept = sum(o.module.stored_numel() for o in outs.values())
    assert kept <= 0.5 * total
    low = outs["model.layers.0.self_attn.q_proj"]
    assert low.info["welore"] == "LRC" and low.info["rank"] == plan[
        "model.layers.0.self_attn.q_proj"]["rank"]
    ranks = [o.info["rank"] for k, o in outs.items() if "q_proj" not in k]
    assert all(r is None or r > low.info["rank"] for r in ranks)
    # a high ratio forces every matrix low-rank; a low one leaves flat spectra dense
    _, outs_lo = compress_planned("welore", weights, ratio=0.2)
    dense = [o for o in outs_lo.values() if o.info["welore"] == "N-LRC"]
    assert dense and all(isinstance(o.module.parts[0], DensePart) for o in dense)
    assert all(o.info["rank"] is None for o in dense)
    w = weights["model.layers.0.mlp.up_proj"]
    assert torch.equal(outs_lo["model.layers.0.mlp.up_proj"].module.dense_weight(), w)


def test_allocation_welore_works_for_fwsvd():
    weights = lr_and_random()
    fisher_stats = {k: LinearStats(**fisher_sums(torch.rand(*w.shape, generator=gen(11))))
                    for k, w in weights.items()}
    method = REGISTRY["fwsvd"]()
    cfg = method.Config(ratio=0.5, allocation="welore")
    with pytest.raises(ValueError, match="spectra"):   # it reads I·W's spectra: needs stats
        method.plan(weights, cfg)
    assert method.plan_needs_for(cfg) == frozenset({"fisher_rows", "fisher_cols"})
    measures = {k: method.plan_measure(make_target(w, name=k, stats=fisher_stats[k]), cfg)
                for k, w in weights.items()}
    plan = method.plan(weights, cfg, measures=measures)
    # one allocation routine, shared by both methods, fed the spectrum each one truncates
    spectra = {k: torch.linalg.svdvals(w.double() * fisher_stats[k].fisher_rows.double()
                                       .sqrt()[:, None]) for k, w in weights.items()}
    ranks, _ = welore_ranks(spectra, 0.5, shapes={k: tuple(w.shape) for k, w in weights.items()})
    assert {k: p["rank"] for k, p in plan.items()} == ranks
    for k, w in weights.items():
        out = method.compress(make_target(w, name=k, stats=fisher_stats[k], plan=plan[k]), cfg)
        assert out.info["rank"] == plan[k]["rank"] and out.info["allocation"] == "welore"
        if plan[k]["rank"] is not None:
            assert out.module.parts[0].rank == plan[k]["rank"] and "fisher_floored" in out.info
    with pytest.raises(UserError, match="welore"):
        method.run_plan(weights, method.Config(rank=4, allocation="welore"))


def test_uniform_plan_is_empty():
    assert REGISTRY["svd"]().plan(lr_and_random(), REGISTRY["svd"].Config()) == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["svd", "asvd", "whitened-svd", "fwsvd"])
def test_methods_run_on_cuda(name):
    dev = torch.device("cuda")
    g = gen(12)
    w = (torch.randn(M, 8, generator=g) @ torch.randn(8, N, generator=g)).to(dev)  # exact rank
    cpu = calib_stats(w.cpu())
    sums = fisher_sums(torch.rand(M, N, generator=gen(13)))
    stats = LinearStats(ntokens=cpu.ntokens, gram=cpu.gram.to(dev),
                        act_absmean=cpu.act_absmean.to(dev),
                        **{k: v.to(dev) for k, v in sums.items()})
    target = Target(name="cuda.layer", layer_index=0, kind="layer", weight=w, bias=None,
                    stats=stats, generator=torch.Generator(device=dev).manual_seed(0),
                    dtype=torch.bfloat16, plan={})
    out = run(name, target, rank=8, svd_method="randomized")
    part = out.module.parts[0]
    assert part.A.device.type == "cuda" and part.A.dtype == torch.bfloat16
    assert torch.isfinite(out.module.dense_weight()).all()
    ref = run(name, make_target(w.cpu(), stats=cpu if name != "fwsvd" else
                                LinearStats(**sums)), rank=8)
    assert torch.allclose(out.module.dense_weight().cpu(), ref.module.dense_weight(),
                          atol=0.05 * float(w.abs().max()))  # bf16 factors
