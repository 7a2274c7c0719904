"""Gradient statistics: equal to a brute-force per-sample backward, model left untouched."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from compressor.core.gradient_file import (
    gradient_fingerprint,
    load_gradient_stats,
    save_gradient_stats,
)
from compressor.core.gradients import gradient_stats
from compressor.errors import UserError

TARGETS = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj",
           "model.layers.1.self_attn.o_proj", "model.layers.1.mlp.gate_proj"]


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).float()


@pytest.fixture(scope="module")
def setup():
    model = tiny_llama()
    g = torch.Generator().manual_seed(1)
    windows = torch.randint(0, 64, (3, 16), generator=g)
    return model, windows


def brute_force(model, windows, names):
    """Plain per-sample backward on a fresh copy; sums g² and |g| by hand."""
    import copy
    m = copy.deepcopy(model).eval()
    fisher = {n: 0.0 for n in names}
    absg = {n: 0.0 for n in names}
    for i in range(windows.shape[0]):
        m.zero_grad(set_to_none=True)
        ids = windows[i:i + 1]
        m(input_ids=ids, labels=ids).loss.backward()
        for n in names:
            g = m.get_submodule(n).weight.grad.double()
            fisher[n] = fisher[n] + g * g
            absg[n] = absg[n] + g.abs()
    return fisher, {n: a / windows.shape[0] for n, a in absg.items()}


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_matches_brute_force(setup):
    model, windows = setup
    calls = []
    stats, info = gradient_stats(model, windows, TARGETS, {"fisher", "grad_absmean"}, "cpu",
                                 progress=lambda i, n: calls.append((i, n)))
    fisher, absg = brute_force(model, windows, TARGETS)
    for n in TARGETS:
        assert set(stats[n]) == {"fisher", "grad_absmean"}
        assert stats[n]["fisher"].dtype == torch.float32
        assert stats[n]["fisher"].shape == model.get_submodule(n).weight.shape
        assert stats[n]["fisher"].device.type == "cpu"
        assert rel_err(stats[n]["fisher"], fisher[n]) < 1e-5
        assert rel_err(stats[n]["grad_absmean"], absg[n]) < 1e-5
        assert float(stats[n]["fisher"].abs().sum()) > 0
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert info["nsamples"] == 3 and info["seqlen"] == 16
    assert info["gradient_checkpointing"] is True
    assert info["peak_rss_bytes"] > 0 and info["weights_bytes"] > 0


def test_only_requested_stat(setup):
    model, windows = setup
    stats, _ = gradient_stats(model, windows[:1], TARGETS[:1], {"fisher"}, "cpu")
    assert set(stats[TARGETS[0]]) == {"fisher"}
    fisher, _ = brute_force(model, windows[:1], TARGETS[:1])
    assert rel_err(stats[TARGETS[0]]["fisher"], fisher[TARGETS[0]]) < 1e-5


def test_fisher_row_and_column_sums_need_no_full_buffer(setup):
    model, windows = setup
    stats, info = gradient_stats(model, windows, TARGETS, {"fisher_rows", "fisher_cols"}, "cpu")
    fisher, _ = brute_force(model, windows, TARGETS)
    for n in TARGETS:
        out_f, in_f = model.get_submodule(n).weight.shape
        assert set(stats[n]) == {"fisher_rows", "fisher_cols"}
        assert stats[n]["fisher_rows"].shape == (out_f,)
        assert stats[n]["fisher_cols"].shape == (in_f,)
        assert rel_err(stats[n]["fisher_rows"], fisher[n].sum(1)) < 1e-5
        assert rel_err(stats[n]["fisher_cols"], fisher[n].sum(0)) < 1e-5
    shapes = [model.get_submodule(n).weight.shape for n in TARGETS]
    assert info["stat_buffers_bytes"] == sum(4 * (o + i) for o, i in shapes)


def test_model_left_as_it_was(setup):
    model, windows = setup
    model.model.embed_tokens.weight.requires_grad_(False)  # a non-default flag must survive
    model.train()
    before_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before_modes = {n: m.training for n, m in model.named_modules()}
    try:
        gradient_stats(model, windows[:2], TARGETS, {"fisher"}, "cpu")
        assert all(p.grad is None for p in model.parameters())
        assert {n: p.requires_grad for n, p in model.named_parameters()} == before_flags
        assert {n: m.training for n, m in model.named_modules()} == before_modes
        assert not model.is_activation_checkpointing
        assert not model.__dict__.get("_require_grads_hooks")
        assert not model.model.embed_tokens._forward_hooks
        assert not any(p._post_accumulate_grad_hooks for p in model.parameters())
    finally:
        model.model.embed_tokens.weight.requires_grad_(True)
        model.eval()


def test_checkpointing_recomputes_and_dropout_off(setup):
    """Each attention block runs twice per sample (forward + recompute), and with dropout in
    the config the result still equals the eval-mode brute force (dropout stays off)."""
    model, windows = setup
    model.config.attention_dropout = 0.5
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    runs = []
    h = model.model.layers[0].self_attn.register_forward_hook(lambda *a: runs.append(1))
    try:
        stats, _ = gradient_stats(model, windows, TARGETS[:1], {"fisher"}, "cpu")
    finally:
        h.remove()
        model.config.attention_dropout = 0.0
        for layer in model.model.layers:
            layer.self_attn.attention_dropout = 0.0
    assert len(runs) == 2 * windows.shape[0]
    fisher, _ = brute_force(model, windows, TARGETS[:1])
    assert rel_err(stats[TARGETS[0]]["fisher"], fisher[TARGETS[0]]) < 1e-5


def test_bad_inputs(setup):
    model, windows = setup
    with pytest.raises(UserError, match="no module named"):
        gradient_stats(model, windows, ["model.layers.9.mlp.up_proj"], {"fisher"}, "cpu")
    with pytest.raises(UserError, match="integer tensor"):
        gradient_stats(model, windows.float(), TARGETS, {"fisher"}, "cpu")
    with pytest.raises(ValueError, match="unknown gradient statistics"):
        gradient_stats(model, windows, TARGETS, {"gram"}, "cpu")
    assert all(p.requires_grad for p in model.parameters())


def test_save_load_round_trip(tmp_path, setup):
    model, windows = setup
    g = torch.Generator().manual_seed(0)
    stats = {n: {"fisher": torch.rand(model.get_submodule(n).weight.shape, generator=g),
                 "grad_absmean": torch.rand(model.get_submodule(n).weight.shape, generator=g),
                 "fisher_rows": torch.rand(model.get_submodule(n).weight.shape[0], generator=g),
                 "fisher_cols": torch.rand(model.get_submodule(n).weight.shape[1], generator=g)}
             for n in TARGETS}
    shapes = {n: tuple(model.get_submodule(n).weight.shape) for n in TARGETS}
    meta = {"model": "tiny", "nsamples": 3, "seqlen": 16, "seed": 0,
            "fingerprint": gradient_fingerprint(windows, shapes)}
    path = tmp_path / "grads.safetensors"
    save_gradient_stats(path, stats, meta)
    loaded, meta2 = load_gradient_stats(path, expected_names=shapes, expected_meta=meta)
    assert meta2 == meta
    assert set(loaded) == set(stats)
    for n in TARGETS:
        for s in ("fisher", "grad_absmean", "fisher_rows", "fisher_cols"):
            assert torch.equal(loaded[n][s], stats[n][s])

    with pytest.raises(UserError, match="another model"):
        load_gradient_stats(path, expected_names=TARGETS[:2])
    wrong = dict(shapes)
    wrong[TARGETS[0]] = (7, 7)
    with pytest.raises(UserError, match="another model"):
        load_gradient_stats(path, expected_names=wrong)
    with pytest.raises(UserError, match="another model"):
        load_gradient_stats(path, expected_meta={**meta, "seed": 1})
    other = tmp_path / "other.safetensors"
    save_gradient_stats(other, {"model.layers.0.mlp.up_proj": stats[TARGETS[0]]}, meta)
    with pytest.raises(UserError, match="another model"):
        load_gradient_stats(other, expected_names=TARGETS)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(UserError, match="not an svdc"):
        load_gradient_stats(foreign)
    with pytest.raises(UserError, match="does not exist"):
        load_gradient_stats(tmp_path / "missing.safetensors")


def test_fingerprint_depends_on_windows(setup):
    _, windows = setup
    shapes = {"a": (2, 3)}
    assert gradient_fingerprint(windows, shapes) == gradient_fingerprint(windows.clone(), shapes)
    other = windows.clone()
    other[0, 0] = (other[0, 0] + 1) % 64
    assert gradient_fingerprint(windows, shapes) != gradient_fingerprint(other, shapes)
    assert gradient_fingerprint(windows, shapes) != gradient_fingerprint(windows, {"a": (3, 2)})


def test_fp16_model_gradients_do_not_underflow():
    """A half-precision model's tiny per-sample gradients survive (loss scaling)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from compressor.core.gradients import gradient_stats
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model32 = LlamaForCausalLM(cfg)
    with torch.no_grad():  # shrink the final norm: every upstream gradient falls to ~1e-8,
        model32.model.norm.weight.mul_(1e-5)  # below fp16's smallest subnormal (6e-8)
    windows = torch.randint(0, 64, (2, 16))
    name = "model.layers.0.mlp.up_proj"
    ref, _ = gradient_stats(model32, windows, [name], {"grad_absmean"}, "cpu")
    model16 = LlamaForCausalLM(cfg).to(torch.float16)
    model16.load_state_dict(model32.state_dict())
    got, _ = gradient_stats(model16, windows, [name], {"grad_absmean"}, "cpu")
    r, g = ref[name]["grad_absmean"], got[name]["grad_absmean"]
    assert (g > 0).float().mean() > 0.9 * (r > 0).float().mean()
    torch.testing.assert_close(g, r, rtol=0.1, atol=r.max().item() * 0.05)
