"""svdc inspect, svdc export and the flag router's edges, through the command line."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from cli_runner import run_cli  # noqa: E402 (tests/ is on sys.path: conftest)
from compressor import cli

FAST = ["--calib", "builtin", "--nsamples", "2", "--seqlen", "32"]




@pytest.fixture(scope="module")
def eora_out(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmd") / "rtn-eora"
    argv = ["svdc", "compress", str(tiny_model_dir), "--method", "eora", "--base", "rtn",
            "--bits", "4", "--group-size", "32", "--rank", "4", *FAST, "-o", str(out)]
    old, sys.argv = sys.argv, argv
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        sys.argv = old
    assert e.value.code == 0
    return out


def test_inspect_lists_parts_and_bits(eora_out, capsys, monkeypatch):
    code, out, err = run_cli(["inspect", str(eora_out)], capsys, monkeypatch)
    text = " ".join((out + err).split())
    assert code == 0
    assert "14 compressed linears" in text            # 2 layers x 7 linears
    assert "quant + lowrank" in text
    rep = json.loads((eora_out / "report.json").read_text())
    assert f"{rep['totals']['targets']['bits_per_weight']:.3f} bits/weight" in text


@pytest.mark.parametrize("make", ["missing", "file", "empty", "plain"])
def test_inspect_refuses_what_is_not_an_output(make, tiny_model_dir, tmp_path, capsys, monkeypatch):
    target = {"missing": tmp_path / "nope", "file": tmp_path / "f.txt", "empty": tmp_path / "e",
              "plain": tiny_model_dir}[make]
    if make == "file":
        target.write_text("x")
    if make == "empty":
        target.mkdir()
    code, _, err = run_cli(["inspect", str(target)], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err and "svdc" in err


def test_export_dense_matches_the_compressed_model(eora_out, tmp_path, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM

    import compressor
    dst = tmp_path / "dense"
    code, _, err = run_cli(["export", str(eora_out), "--format", "dense", "-o", str(dst)],
                           capsys, monkeypatch)
    assert code == 0, err
    ids = torch.randint(3, 300, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = compressor.load(eora_out)(ids).logits
        b = AutoModelForCausalLM.from_pretrained(dst)(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_export_peft_adapter_matches_the_compressed_model(eora_out, tmp_path, capsys, monkeypatch):
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import compressor
    dst = tmp_path / "peft"
    code, _, err = run_cli(["export", str(eora_out), "--format", "peft-adapter", "-o", str(dst)],
                           capsys, monkeypatch)
    assert code == 0, err
    cfg = json.loads((dst / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 4
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(dst / "base"),
                                      dst / "adapter")
    ids = torch.randint(3, 300, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = compressor.load(eora_out)(ids).logits
        b = model(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_export_unknown_format_is_one_line(eora_out, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["export", str(eora_out), "--format", "onnx", "-o", str(tmp_path / "x")],
                           capsys, monkeypatch)
    assert code == 2 and "onnx" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_base_with_recipe_is_refused(tiny_model_dir, tmp_path, capsys, monkeypatch):
    rec = tmp_path / "r.yaml"
    rec.write_text("stages:\n  - {method: rtn, bits: 4}\n  - {method: eora, rank: 4}\n")
    code, _, err = run_cli(["compress", str(tiny_model_dir), "--recipe", str(rec), "--base", "gptq",
                            "-o", str(tmp_path / "o")], capsys, monkeypatch)
    assert code == 2 and "--base" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_flag_no_recipe_stage_takes_is_refused(tiny_model_dir, tmp_path, capsys, monkeypatch):
    rec = tmp_path / "r.yaml"
    rec.write_text("stages:\n  - {method: svd, ratio: 0.2}\n")
    code, _, err = run_cli(["compress", str(tiny_model_dir), "--recipe", str(rec), "--bits", "4",
                            "-o", str(tmp_path / "o")], capsys, monkeypatch)
    assert code == 2 and "--bits does not apply" in " ".join(err.split())


def test_flag_reaches_the_last_stage_that_takes_it():
    from compressor.recipe import stages_from_flags
    stages = stages_from_flags("eora", None, {"bits": 3, "rank": 8, "group_size": 64})
    assert stages == [{"method": "gptq", "bits": 3, "group_size": 64},
                      {"method": "eora", "rank": 8}]
    with pytest.raises(Exception, match="--base applies to compensation"):
        stages_from_flags("svd", "rtn", {})


def test_data_free_lost_calibrates_on_random_token_ids(tiny_model_dir, tmp_path, capsys,
                                                      monkeypatch):
    """`--calib random`: no text is read; LOST's channel scales come from the token ids, the
    report says so, and the same seed writes the same tensors."""
    from safetensors.torch import load_file
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        code, _, err = run_cli(["compress", str(tiny_model_dir), "--method", "lost", "--ratio",
                                "0.3", "--calib", "random", "--nsamples", "2", "--seqlen", "32",
                                "-o", str(out)], capsys, monkeypatch)
        assert code == 0, err
        outs.append(out)
    rep = json.loads((outs[0] / "report.json").read_text())
    assert rep["calibration"]["dataset"] == "random"
    assert all(m["info"]["act_scale"] for m in rep["modules"])
    a, b = (load_file(str(o / "model.safetensors")) for o in outs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_whitened_lost_on_few_tokens_says_so_and_still_runs(tiny_model_dir, tmp_path, capsys,
                                                           monkeypatch):
    code, out, err = run_cli(["compress", str(tiny_model_dir), "--method", "lost", "--ratio",
                              "0.3", "--set", "whiten=true", *FAST, "-o", str(tmp_path / "o")],
                             capsys, monkeypatch)
    assert code == 0, err
    said = " ".join((out + err).split())          # rich wraps the line to the terminal
    assert "lost whiten=true: 64 calibration tokens for inputs up to 96 wide" in said
    assert said.count("calibration tokens for inputs") == 1


def test_methods_says_how_each_option_is_passed(capsys, monkeypatch):
    """An option with a compress flag shows the flag; every other one --set key=...; a shown
    flag exists on `svdc compress`."""
    import re

    from compressor.cli.compress import STAGE_FLAGS
    from compressor.core.registry import get_method, method_names
    code, help_out, help_err = run_cli(["compress", "--help"], capsys, monkeypatch)
    help_out += help_err
    for name in method_names():
        code, out, err = run_cli(["methods", name], capsys, monkeypatch)
        assert code == 0
        text = out + err
        shown = set(re.findall(r"│ (--[a-z-]+)(?: |=)", text))
        for flag in shown - {"--set"}:
            assert flag[2:].replace("-", "_") in STAGE_FLAGS and flag in help_out, (name, flag)
    code, out, err = run_cli(["methods", "eora"], capsys, monkeypatch)
    out += err
    assert "--set eig_floor=..." in out and "--rank" in out
    code, out, err = run_cli(["methods", "plan"], capsys, monkeypatch)
    out += err
    assert "required" in out and "PydanticUndefined" not in out and "--set menu=..." in out


def test_target_bits_is_the_plan_stage(tiny_model_dir, tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(["compress", str(tiny_model_dir), "--target-bits", "4",
                              "--method", "gptq", "-o", str(tmp_path / "x")], capsys, monkeypatch)
    assert code == 2 and "--target-bits chooses the methods itself" in err
    code, out, err = run_cli(["compress", str(tiny_model_dir), "--target-bits", "1", *FAST,
                              "-o", str(tmp_path / "y")], capsys, monkeypatch)
    assert code == 2 and "below the cheapest menu mix" in err and not (tmp_path / "y").exists()
    menu = "menu=[{method: gptq, bits: 3, group_size: 32}, {method: gptq, bits: 4, group_size: 32}]"
    code, out, err = run_cli(["compress", str(tiny_model_dir), "--target-bits", "5", *FAST,
                              "--set", menu, "-o", str(tmp_path / "z")], capsys, monkeypatch)
    assert code == 0, err
    rep = json.loads((tmp_path / "z" / "report.json").read_text())
    assert rep["recipe"]["stages"][0]["method"] == "plan"
    assert rep["totals"]["targets"]["bits_per_weight"] <= 5
    code, out, err = run_cli(["inspect", str(tmp_path / "z")], capsys, monkeypatch)
    assert code == 0 and "plan: the candidate each matrix got" in out + err
