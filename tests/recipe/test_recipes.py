"""Recipes: the shipped files validate, typos and bad values are clear errors, flags land in
the saved recipe, a saved recipe reproduces its output, and scripts/reproduce.py gates CI."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from compressor.errors import UserError
from compressor.recipe import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[2]
FULL = sorted((ROOT / "recipes").glob("*.yaml"))
SMALL = sorted((ROOT / "recipes" / "small").glob("*.yaml"))
FAST_CAL = ["--calib", "builtin", "--nsamples", "2", "--seqlen", "32"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: with 2 threads on a busy 2-core machine, each LAPACK call waits on a
    spinning partner (a 64x96 SVD took 0.36 s instead of 2 ms); one thread is faster."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_recipe_sets_are_complete():
    assert len(FULL) >= 12, FULL
    assert {p.name for p in SMALL} <= {p.name for p in FULL}, "a small recipe without a full-size one"


@pytest.mark.parametrize("path", FULL + SMALL, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_shipped_recipe_validates(path):
    r = load_recipe(path)
    assert r.model and r.output and r.eval is not None


@pytest.mark.parametrize("path", SMALL, ids=lambda p: p.name)
def test_small_recipe_has_expectations(path):
    r = load_recipe(path)
    assert r.expect, f"{path.name} has no expect block"
    assert "ppl.builtin" in r.expect and "bits_per_weight" in r.expect
    for name, e in r.expect.items():
        assert 0 < e.tol <= 0.05 * abs(e.value), f"{path.name}: {name} tolerance {e.tol} is not honest"
    assert r.model == "smollm2-135m" and r.calibration.dataset == "builtin"


def _minimal(**over):
    data = {"model": "m", "stages": [{"method": "gptq", "bits": 3}], "output": "o"}
    data.update(over)
    return data


def test_misspelled_top_level_key_names_the_nearest():
    data = _minimal(calibraton={"nsamples": 4})
    with pytest.raises(UserError, match=r"'calibraton'.*did you mean 'calibration'"):
        parse_recipe(data)


def test_misspelled_nested_key_names_the_nearest():
    with pytest.raises(UserError, match=r"'calibration.nsample'.*did you mean 'nsamples'"):
        parse_recipe(_minimal(calibration={"nsample": 4}))


def test_misspelled_stage_key_names_the_nearest():
    with pytest.raises(UserError, match=r"stage 1 \(gptq\).*'bit'.*did you mean 'bits'"):
        parse_recipe(_minimal(stages=[{"method": "gptq", "bit": 4}]))


def test_misspelled_key_in_a_file_names_the_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model: m\nstages:\n  - {method: svd, ratoi: 0.2}\n")
    with pytest.raises(UserError, match=r"r\.yaml.*'ratoi'.*did you mean 'ratio'"):
        load_recipe(p)


def test_wrong_type_is_a_clear_error():
    with pytest.raises(UserError, match=r"'calibration.nsamples'.*got 'many'"):
        parse_recipe(_minimal(calibration={"nsamples": "many"}))
    with pytest.raises(UserError, match=r"stage 1 \(gptq\).*'bits'"):
        parse_recipe(_minimal(stages=[{"method": "gptq", "bits": "four"}]))


def test_random_calibration_cannot_feed_heal_or_evaluation():
    parse_recipe(_minimal(calibration={"dataset": "random"}))
    with pytest.raises(UserError, match="heal trains on windows of the calibration text"):
        parse_recipe(_minimal(calibration={"dataset": "random"},
                              stages=[{"method": "svd", "ratio": 0.2}, {"method": "heal"}]))
    with pytest.raises(UserError, match="'random' is a calibration source"):
        parse_recipe(_minimal(eval={"datasets": ["random"]}))


def test_missing_stages_is_a_clear_error():
    data = _minimal()
    del data["stages"]
    with pytest.raises(UserError, match=r"missing required key 'stages'"):
        parse_recipe(data)


def _cli(*args: str):
    from typer.testing import CliRunner

    from compressor.cli import app
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, (res.output, res.exception)
    return res


def test_flags_land_in_saved_recipe_and_rerun_is_byte_identical(tiny_model_dir, tmp_path):
    out, out2 = tmp_path / "out", tmp_path / "out2"
    _cli("compress", str(tiny_model_dir), "--method", "svd", "--ratio", "0.3", "--seed", "3",
         *FAST_CAL, "-o", str(out))
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert [(s["method"], s["ratio"]) for s in saved["stages"]] == [("svd", 0.3)]
    assert saved["calibration"]["seed"] == 3 and saved["calibration"]["nsamples"] == 2
    _cli("run", str(out / "recipe.yaml"), "-o", str(out2))
    assert (out / "model.safetensors").read_bytes() == (out2 / "model.safetensors").read_bytes()


def test_flags_override_a_recipe(tiny_model_dir, tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text("stages:\n  - {method: svd, ratio: 0.2}\ncalibration: {seed: 1}\n")
    out = tmp_path / "out"
    _cli("compress", str(tiny_model_dir), "--recipe", str(rec), "--ratio", "0.4", "--seed", "5",
         *FAST_CAL, "-o", str(out))
    saved = load_recipe(out / "recipe.yaml")
    assert saved.stages[0].ratio == 0.4 and saved.calibration.seed == 5
    assert saved.model == str(tiny_model_dir) and saved.output == str(out)


def _reproduce_module():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod   # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _tiny_recipe(path: Path, model: Path, expect: dict | None, with_eval: bool = False) -> Path:
    data = {"model": str(model), "stages": [{"method": "svd", "ratio": 0.3}],
            "calibration": {"dataset": "builtin", "nsamples": 2, "seqlen": 32}}
    if with_eval:
        data["eval"] = {"datasets": ["builtin"], "seqlen": 32, "max_windows": 2}
    if expect is not None:
        data["expect"] = expect
    path.write_text(yaml.safe_dump(data))
    return path


def test_reproduce_reports_pass_miss_and_error(tiny_model_dir, tmp_path, capsys):
    good = _tiny_recipe(tmp_path / "good.yaml", tiny_model_dir,
                        {"ppl.builtin": {"value": 1.0, "tol": 1e9}}, with_eval=True)
    bad = _tiny_recipe(tmp_path / "bad.yaml", tiny_model_dir,
                       {"bits_per_weight": {"value": 1.0, "tol": 0.001}})
    empty = _tiny_recipe(tmp_path / "empty.yaml", tiny_model_dir, None)
    code = _reproduce_module().main([str(good), str(bad), str(empty), "--out", str(tmp_path / "o")])
    text = capsys.readouterr().out
    assert code != 0
    assert text.rstrip().splitlines()[-1] == "reproduce: 1 passed, 2 failed"
    assert "nothing to check" in text
    assert (tmp_path / "o" / "good" / "model.safetensors").is_file()


def test_reproduce_all_met_exits_zero_and_cleans_up(tiny_model_dir, tmp_path, capsys, monkeypatch):
    good = _tiny_recipe(tmp_path / "good.yaml", tiny_model_dir,
                        {"params_kept": {"value": 0.7, "tol": 0.05}})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert _reproduce_module().main([str(good)]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == "reproduce: 1 passed, 0 failed"
    assert list(scratch.iterdir()) == [], "temporary outputs were not removed"


def test_reproduce_command_line_exits_nonzero(tmp_path):
    """The script itself (not just main()): a recipe it cannot check fails the run."""
    empty = tmp_path / "x.yaml"
    empty.write_text("model: m\nstages: [{method: svd}]\n")
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "reproduce.py"), str(empty),
                        str(tmp_path / "absent.yaml")], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 1, p.stderr
    assert p.stdout.rstrip().splitlines()[-1] == "reproduce: 0 passed, 2 failed"
    assert "not found" in p.stdout and "nothing to check" in p.stdout
