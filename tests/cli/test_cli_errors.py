"""Every bad input: one clear line naming the problem and the fix, non-zero exit, no traceback."""

from __future__ import annotations

import sys

import pytest
import yaml

from compressor import cli


def run_cli(args, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["svdc", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    return e.value.code, err


def assert_one_line_error(code, err, *needles):
    assert code != 0
    assert "Traceback" not in err
    text = " ".join(err.split())
    for n in needles:
        assert n in text, f"{n!r} not in {text!r}"


def test_unknown_method(capsys, monkeypatch, tiny_model_dir, tmp_path):
    code, err = run_cli(["compress", str(tiny_model_dir), "--method", "gtpq", "-o", str(tmp_path / "o")],
                        capsys, monkeypatch)
    assert_one_line_error(code, err, "unknown method 'gtpq'", "Did you mean 'gptq'")


def test_unknown_model(capsys, monkeypatch, tmp_path):
    code, err = run_cli(["compress", str(tmp_path / "nope"), "--method", "svd", "-o", str(tmp_path / "o")],
                        capsys, monkeypatch)
    assert_one_line_error(code, err, "nope")
    assert code == 2


def test_alias_typo(capsys, monkeypatch, tmp_path):
    code, err = run_cli(["compress", "smollm2-13m", "--method", "svd", "-o", str(tmp_path / "o")],
                        capsys, monkeypatch)
    assert_one_line_error(code, err, "smollm2-135m")


def test_rank_too_large(capsys, monkeypatch, tiny_model_dir, tmp_path):
    code, err = run_cli(["compress", str(tiny_model_dir), "--method", "svd", "--rank", "5000",
                         "--nsamples", "2", "--seqlen", "32", "-o", str(tmp_path / "o")], capsys, monkeypatch)
    assert_one_line_error(code, err, "rank")
    assert not (tmp_path / "o").exists()


def test_bits_out_of_range(capsys, monkeypatch, tiny_model_dir, tmp_path):
    code, err = run_cli(["compress", str(tiny_model_dir), "--method", "rtn", "--bits", "12",
                         "-o", str(tmp_path / "o")], capsys, monkeypatch)
    assert_one_line_error(code, err, "bits")


def test_flag_that_does_not_apply(capsys, monkeypatch, tiny_model_dir, tmp_path):
    code, err = run_cli(["compress", str(tiny_model_dir), "--method", "svd", "--outlier-frac", "0.01",
                         "-o", str(tmp_path / "o")], capsys, monkeypatch)
    assert_one_line_error(code, err, "--outlier-frac does not apply to svd")


def test_budget_that_cannot_be_met(capsys, monkeypatch, tiny_model_dir, tmp_path):
    code, err = run_cli(["compress", str(tiny_model_dir), "--method", "lqlora", "--bits", "1.0", "--rank", "4",
                         "--nsamples", "2", "--seqlen", "32", "-o", str(tmp_path / "o")], capsys, monkeypatch)
    assert_one_line_error(code, err, "budget")


def test_misspelled_recipe_key(capsys, monkeypatch, tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text(yaml.safe_dump({"model": "x", "calibraton": {"nsamples": 4}, "stages": [{"method": "svd"}]}))
    code, err = run_cli(["run", str(bad)], capsys, monkeypatch)
    assert_one_line_error(code, err, "unknown key 'calibraton'", "did you mean 'calibration'")


def test_misspelled_stage_key(capsys, monkeypatch, tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text(yaml.safe_dump({"model": "x", "stages": [{"method": "gptq", "bit": 4}]}))
    code, err = run_cli(["run", str(bad)], capsys, monkeypatch)
    assert_one_line_error(code, err, "stage 1 (gptq)", "'bit'", "did you mean 'bits'")


def test_malformed_yaml(capsys, monkeypatch, tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("model: x\nstages: [method: svd\n")
    code, err = run_cli(["run", str(bad)], capsys, monkeypatch)
    assert_one_line_error(code, err, "not valid YAML", "line")


def test_missing_checkpoint_for_eval(capsys, monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_cli(["eval", str(empty), "--max-windows", "1"], capsys, monkeypatch)
    assert_one_line_error(code, err, "config.json")


def test_existing_output_needs_force(capsys, monkeypatch, tiny_model_dir, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    code, err = run_cli(["compress", str(tiny_model_dir), "--method", "svd", "-o", str(out)], capsys, monkeypatch)
    assert_one_line_error(code, err, "already exists", "--force")


def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch, tiny_model_dir, tmp_path):
    import compressor.api as api

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(api, "compress", interrupted)
    code, err = run_cli(["compress", str(tiny_model_dir), "--method", "svd", "-o", str(tmp_path / "o")],
                        capsys, monkeypatch)
    assert code == 130
    assert_one_line_error(code, err, "interrupted", "no output folder was written")
    assert "--resume" not in err     # no layer was checkpointed: nothing to resume


def test_debug_shows_traceback(monkeypatch, tmp_path):
    from compressor.errors import UserError
    monkeypatch.setattr(sys, "argv", ["svdc", "--debug", "run", str(tmp_path / "missing.yaml")])
    with pytest.raises(UserError):
        cli.main()


def test_methods_lists_every_registry_name(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["svdc", "methods"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out = capsys.readouterr().err
    assert e.value.code == 0
    for name in ("svd", "asvd", "whitened-svd", "rtn", "gptq", "eora", "lqlora", "fwsvd", "gwq",
                 "welore", "lost", "cospadi"):
        assert name in out
