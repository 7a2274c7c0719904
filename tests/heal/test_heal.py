"""The heal stage on a tiny Llama: zero steps change nothing, training lowers the KL, only the
low-rank factors get gradients, same seed same tensors, resume continues, export carries it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compressor.api import compress
from compressor.heal.config import HealConfig
from compressor.heal.data import heal_windows, teacher_topk, topk_with_tail
from compressor.heal.factors import lowrank_parts, trainable_factors
from compressor.heal.loss import topk_kl
from compressor.heal.trainer import heal, mean_loss
from compressor.parts.base import CompressedLinear
from compressor.recipe import parse_recipe, stages_from_flags, with_heal

CAL = {"nsamples": 4, "seqlen": 64, "seed": 0}


def _recipe(model_dir: Path, out: Path, stages, **extra):
    return parse_recipe({"model": str(model_dir), "stages": stages, "output": str(out),
                         "calibration": CAL, **extra})


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    teacher_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return tok, teacher_model


@pytest.fixture(scope="module")
def compressed(tiny_model_dir, tmp_path_factory):
    """GPTQ-free quick base: RTN 3-bit + EoRA rank 4 (parts [quant, lowrank]) in memory."""
    out = tmp_path_factory.mktemp("heal") / "rtn-eora"
    res = compress(_recipe(tiny_model_dir, out, [{"method": "rtn", "bits": 3, "group_size": 32},
                                                 {"method": "eora", "rank": 4}]), keep_model=True)
    return res


@pytest.fixture(scope="module")
def data(tiny, compressed):
    tok, teacher_model = tiny
    calib = torch.tensor([[0]])  # nothing to avoid matters here; real avoidance tested below
    train, info = heal_windows(tok, "builtin", 6, 64, 0, calib)
    held, _ = heal_windows(tok, "builtin", 4, 64, 123, train)
    assert info["windows"] == "disjoint"
    return {"train": train, "held": held,
            "t_train": teacher_topk(teacher_model, train, 16, torch.device("cpu")),
            "t_held": teacher_topk(teacher_model, held, 16, torch.device("cpu"))}


def _fresh(compressed_model):
    import copy
    return copy.deepcopy(compressed_model)


# ----------------------------------------------------------------------------- loss

def test_topk_kl_is_the_full_kl_at_k_equals_vocab_and_a_lower_bound_below():
    g = torch.Generator().manual_seed(0)
    t_logits, s_logits = torch.randn(5, 40, generator=g) * 2, torch.randn(5, 40, generator=g) * 2
    full = torch.nn.functional.kl_div(torch.log_softmax(s_logits, -1), torch.log_softmax(t_logits, -1),
                                      log_target=True, reduction="none").sum(-1).mean()
    assert torch.allclose(topk_kl(s_logits, *topk_with_tail(t_logits, 40)), full, atol=1e-6)
    for k in (1, 5, 20):
        kk = topk_kl(s_logits, *topk_with_tail(t_logits, k))
        assert 0 <= kk <= full + 1e-6
    assert topk_kl(t_logits, *topk_with_tail(t_logits, 5)).abs() < 1e-6


# ----------------------------------------------------------------------------- data

def test_heal_windows_avoid_the_calibration_windows(tiny):
    from compressor.data import calibration_windows
    tok, _ = tiny
    calib = calibration_windows(tok, "builtin", 8, 64, 0)
    win, info = heal_windows(tok, "builtin", 16, 64, 0, calib)
    assert info["windows"] == "disjoint" and info["skipped_documents"] >= 1
    # no 16-token stretch of a calibration window appears in a heal window
    grams = {tuple(w[i:i + 16]) for w in calib.tolist() for i in range(0, 49)}
    assert not any(tuple(w[i:i + 16]) in grams for w in win.tolist() for i in range(49))
    again, _ = heal_windows(tok, "builtin", 16, 64, 0, calib)
    assert torch.equal(win, again)


def test_heal_windows_fall_back_and_say_so(tiny, tmp_path):
    tok, _ = tiny
    small = tmp_path / "small.txt"
    small.write_text("a few words only\n\nand another short document here")
    from compressor.data import calibration_windows
    calib = calibration_windows(tok, str(small), 2, 8, 0)
    win, info = heal_windows(tok, str(small), 3, 8, 0, calib)
    assert info["windows"] == "calibration" and "fewer than" in info["reason"]
    assert win.shape == (3, 8)


# ----------------------------------------------------------------------------- training

def test_zero_steps_change_nothing_byte_identical(compressed, data):
    model = _fresh(compressed.model)
    before = _state(model)
    flags = [p.requires_grad for p in model.parameters()]
    res = heal(model, data["train"], HealConfig(steps=0), device="cpu", seed=0, teacher=data["t_train"])
    after = model.state_dict()
    assert res.losses == [] and res.trained_parts == 14
    assert list(before) == list(after)
    for k in before:
        assert before[k].dtype == after[k].dtype and torch.equal(before[k], after[k]), k
    assert [p.requires_grad for p in model.parameters()] == flags


def test_fp32_round_trip_is_exact_for_half_factors(compressed):
    model = _fresh(compressed.model).to(torch.bfloat16)
    before = _state(model)
    with trainable_factors(model) as f:
        assert all(p.dtype == torch.float32 and p.requires_grad for p in f.params.values())
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k


def test_only_lowrank_factors_receive_gradients(compressed, data):
    model = _fresh(compressed.model)
    ids = data["train"][0]
    with trainable_factors(model) as f:
        loss = topk_kl(model(input_ids=ids[None]).logits[0], *data["t_train"].window(0, torch.device("cpu")))
        loss.backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        assert with_grad == {f"{k}" for k in f.params}, with_grad ^ set(f.params)
        assert all(p.grad.abs().sum() > 0 for p in f.params.values())
        assert not any(b.requires_grad for b in model.buffers())
    parts, _ = lowrank_parts(model)
    assert all(type(p.A) is torch.Tensor and "A" in p._buffers for p in parts.values())


def test_heal_lowers_the_kl_and_trains_nothing_else(compressed, data):
    model = _fresh(compressed.model)
    before = _state(model)
    kl0_train = mean_loss(model, data["train"], "kl", data["t_train"], "cpu")
    kl0_held = mean_loss(model, data["held"], "kl", data["t_held"], "cpu")
    res = heal(model, data["train"], HealConfig(steps=24, lr=3e-3, warmup=2), device="cpu", seed=0,
               teacher=data["t_train"])
    kl1_train = mean_loss(model, data["train"], "kl", data["t_train"], "cpu")
    kl1_held = mean_loss(model, data["held"], "kl", data["t_held"], "cpu")
    assert kl1_train < 0.9 * kl0_train, (kl0_train, kl1_train)
    assert kl1_held < kl0_held, (kl0_held, kl1_held)      # windows it never saw
    assert len(res.losses) == 24 and res.gradient_checkpointing
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith((".A", ".B")) for k in changed), changed
    assert all(model.get_submodule(k.rsplit(".", 1)[0]).type_name == "lowrank" for k in changed)


def test_ce_loss_trains_too(compressed, data):
    model = _fresh(compressed.model)
    ce0 = mean_loss(model, data["train"], "ce", None, "cpu")
    heal(model, data["train"], HealConfig(steps=12, lr=3e-3, loss="ce", warmup=0), device="cpu", seed=0)
    assert mean_loss(model, data["train"], "ce", None, "cpu") < ce0


def test_same_seed_same_tensors_other_seed_other_order(compressed, data):
    runs = []
    for seed in (0, 0, 1):
        model = _fresh(compressed.model)
        heal(model, data["train"], HealConfig(steps=5, lr=1e-3), device="cpu", seed=seed,
             teacher=data["t_train"])
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_resume_continues_to_the_same_tensors(compressed, data, tmp_path):
    cfg = HealConfig(steps=6, lr=1e-3, save_every=3, warmup=1)
    full = _fresh(compressed.model)
    ref = heal(full, data["train"], cfg, device="cpu", seed=0, teacher=data["t_train"])

    class Stop(Exception):
        pass

    def stop_at_5(i, n, loss):
        if i == 5:
            raise Stop

    model = _fresh(compressed.model)
    with pytest.raises(Stop):
        heal(model, data["train"], cfg, device="cpu", seed=0, teacher=data["t_train"],
             on_step=stop_at_5, state_dir=tmp_path)
    assert json.loads((tmp_path / "heal_state.json").read_text())["step"] == 3
    # the interrupted model's factors are back to buffers; resume from a fresh copy
    model = _fresh(compressed.model)
    res = heal(model, data["train"], cfg, device="cpu", seed=0, teacher=data["t_train"],
               state_dir=tmp_path, resume=True)
    assert res.resumed_from_step == 3 and res.losses == ref.losses
    assert all(torch.equal(v, full.state_dict()[k]) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- routing

def test_heal_steps_flag_routes_into_a_heal_stage():
    stages = stages_from_flags("whitened-svd", None, {"ratio": 0.2, "lr": 5e-5}, heal_steps=7)
    assert stages == [{"method": "whitened-svd", "ratio": 0.2},
                      {"method": "heal", "steps": 7, "lr": 5e-5}]
    recipe_stages = [{"method": "svd"}, {"method": "heal", "steps": 200, "loss": "ce"}]
    with_heal(recipe_stages, 3)
    assert recipe_stages[1] == {"method": "heal", "steps": 3, "loss": "ce"}
    eora = stages_from_flags("eora", None, {"bits": 3, "rank": 8}, heal_steps=2)
    assert [s["method"] for s in eora] == ["gptq", "eora", "heal"]


# ----------------------------------------------------------------------------- end to end

def test_api_zero_steps_writes_the_same_tensors(tiny_model_dir, tmp_path):
    stages = [{"method": "whitened-svd", "ratio": 0.3}]
    a = compress(_recipe(tiny_model_dir, tmp_path / "a", stages, storage_dtype="bfloat16"))
    b = compress(_recipe(tiny_model_dir, tmp_path / "b", stages + [{"method": "heal", "steps": 0}],
                         storage_dtype="bfloat16"))
    assert (a.output / "model.safetensors").read_bytes() == (b.output / "model.safetensors").read_bytes()
    assert b.report["heal"]["steps"] == 0


def test_api_heal_report_resume_and_peft_export(tiny_model_dir, tmp_path):
    from compressor.checkpoint import export_peft_adapter
    base = [{"method": "rtn", "bits": 3, "group_size": 32}, {"method": "eora", "rank": 4}]
    hstage = {"method": "heal", "steps": 6, "lr": 2e-3, "nsamples": 4, "save_every": 2, "warmup": 1}
    ev = {"eval": {"datasets": ["builtin"], "seqlen": 64, "max_windows": 3}}
    plain = compress(_recipe(tiny_model_dir, tmp_path / "plain", base, **ev))
    healed = compress(_recipe(tiny_model_dir, tmp_path / "healed", base + [hstage], **ev))
    rep = healed.report
    assert rep["heal"]["eval_before"][0]["ppl"] == pytest.approx(plain.report["eval"][0]["ppl"], rel=1e-6)
    assert rep["heal"]["eval_before"][0]["ppl"] != rep["eval"][0]["ppl"]
    assert rep["heal"]["data"]["windows"] == "disjoint"
    assert (healed.output / "heal_loss.png").is_file()
    assert "## Heal" in (healed.output / "report.md").read_text()
    assert rep["totals"]["model"]["bytes_after"] == plain.report["totals"]["model"]["bytes_after"]

    # --resume: interrupted in the middle of healing, continued, same bytes
    class Stop(Exception):
        pass

    class StopAt:
        def start(self, stage, total, unit=""):
            pass

        def advance(self, stage, step=1, note=""):
            if stage == "heal" and note.startswith("step 5/"):
                raise Stop

        def finish(self, stage):
            pass

    out = tmp_path / "resumed"
    with pytest.raises(Stop):
        compress(_recipe(tiny_model_dir, out, base + [hstage], **ev), progress=StopAt())
    assert (tmp_path / ".resumed.resume" / "heal" / "heal_state.json").is_file()
    resumed = compress(_recipe(tiny_model_dir, out, base + [hstage], **ev), resume=True)
    assert resumed.report["heal"]["resumed_from_step"] == 4
    assert resumed.report["heal"]["data"]["teacher"]["loaded_from_resume"]
    assert (out / "model.safetensors").read_bytes() == (healed.output / "model.safetensors").read_bytes()

    # the PEFT adapter carries the healed factors (not the pre-heal ones)
    exp = export_peft_adapter(healed.output, tmp_path / "peft")
    lora = load_file(str(exp / "adapter" / "adapter_model.safetensors"))
    saved = load_file(str(healed.output / "model.safetensors"))
    saved_plain = load_file(str(plain.output / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj"
    a_key = f"{name}.parts.1.A"
    assert torch.equal(lora[f"base_model.model.{name}.lora_A.weight"], saved[a_key].to(lora[f"base_model.model.{name}.lora_A.weight"].dtype))
    assert not torch.equal(saved[a_key], saved_plain[a_key])
    assert isinstance(healed, object) and CompressedLinear


def test_recipe_puts_heal_last_and_once():
    from compressor.errors import UserError
    ok = parse_recipe({"model": "m", "stages": [{"method": "svd"}, {"method": "heal", "steps": 3}]})
    assert ok.stages[1].steps == 3 and ok.stages[1].loss == "kl"
    bad = {"trains what a compression stage made": [{"method": "heal"}],
           "comes after the post stage": [{"method": "svd"}, {"method": "heal"}, {"method": "rtn"}],
           "appears twice": [{"method": "svd"}, {"method": "heal"}, {"method": "heal"}],
           "did you mean 'steps'": [{"method": "svd"}, {"method": "heal", "stepz": 3}]}
    for why, stages in bad.items():
        with pytest.raises(UserError) as e:
            parse_recipe({"model": "m", "stages": stages})
        assert why in str(e.value), (why, str(e.value))
