"""Recipe parser attacks (issue 25): an alias bomb, deep nesting and a huge file are each
refused at once as one UserError line; a misspelled top-level key gets its did-you-mean."""

from __future__ import annotations

import sys
import time

import pytest

from compressor.errors import UserError
from compressor.recipe import dump_recipe, load_recipe, parse_recipe, parse_set
from compressor.recipe.io import MAX_BYTES, load_yaml


def _bomb() -> str:
    """Billion laughs: 9 levels of 9 aliases, ~10^9 strings once expanded."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, cur in zip("abcdefghi", "bcdefghij"):
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\nmodel: m\nstages: [{method: svd}]\n"


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_alias_bomb_is_refused_quickly(tmp_path):
    p = tmp_path / "bomb.yaml"
    p.write_text(_bomb())
    t = time.perf_counter()
    with pytest.raises(UserError, match=r"bomb\.yaml: refused at line 2.*alias '\*a'") as e:
        load_recipe(p)
    assert time.perf_counter() - t < 1.0
    _one_line(e)


def test_a_single_alias_is_refused_too():
    with pytest.raises(UserError, match="alias"):
        load_yaml("base: &b {method: svd}\nstages: [*b]\n", "r.yaml")
    assert load_yaml("stages: [&b {method: svd}]\n", "r.yaml")   # an unused anchor is harmless


@pytest.mark.parametrize("deep", ["[" * 10_000 + "]" * 10_000,
                                  "{a: " * 10_000 + "1" + "}" * 10_000])
def test_deep_nesting_is_refused_without_recursion_error(tmp_path, deep):
    p = tmp_path / "deep.yaml"
    p.write_text(f"model: m\nstages: [{{method: svd}}]\nx: {deep}\n")
    assert len(deep) > sys.getrecursionlimit()
    with pytest.raises(UserError, match=r"deep\.yaml: refused at line 3.*nested deeper than") as e:
        load_recipe(p)
    _one_line(e)


def test_file_over_the_size_limit_is_refused(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("model: m\nstages: [{method: svd}]\n" + "#" * MAX_BYTES + "\n")
    with pytest.raises(UserError, match=r"big\.yaml: larger than 1 MiB") as e:
        load_recipe(p)
    _one_line(e)


def test_misspelled_top_level_key_without_its_correct_spelling(tmp_path):
    """'stagse' also leaves 'stages' missing: the typo is what the message names."""
    with pytest.raises(UserError, match=r"unknown key 'stagse'; did you mean 'stages'\?"):
        parse_recipe({"model": "m", "stagse": [{"method": "svd"}]})
    p = tmp_path / "r.yaml"
    p.write_text("model: m\nstagse:\n  - {method: svd}\n")
    with pytest.raises(UserError, match=r"r\.yaml: unknown key 'stagse'; did you mean 'stages'"):
        load_recipe(p)


def test_missing_stages_alone_is_still_reported():
    with pytest.raises(UserError, match="missing required key 'stages'"):
        parse_recipe({"model": "m"})


def test_set_values_use_the_same_loader():
    assert parse_set(["percdamp=0.05", "sym=true"]) == {"percdamp": 0.05, "sym": True}
    with pytest.raises(UserError, match=r"--set .*alias"):
        parse_set(["x=[&a [1, 2], *a]"])
    with pytest.raises(UserError, match=r"--set 'x=\[1': not valid YAML"):
        parse_set(["x=[1"])


def test_a_saved_recipe_loads_under_the_limits(tmp_path):
    r = parse_recipe({"model": "m", "stages": [{"method": "gptq", "bits": 4}, {"method": "eora"}],
                      "targets": {"include": ["*proj"], "exclude": ["*proj"]}})
    p = tmp_path / "recipe.yaml"
    p.write_text(dump_recipe(r))
    assert load_recipe(p) == r


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys, monkeypatch):
    from compressor import cli
    p = tmp_path / "bomb.yaml"
    p.write_text(_bomb())
    monkeypatch.setattr(sys, "argv", ["svdc", "run", str(p)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert e.value.code == 2 and len(err) == 1 and "alias" in err[0], err


@pytest.mark.parametrize("method", ["svd", "whitened-svd", "welore", "cospadi", "lost"])
def test_ratio_zero_is_refused_when_the_recipe_is_read(method):
    """A ratio that removes nothing is refused before any work (it was refused only at the
    first layer, after loading and calibrating)."""
    from compressor.errors import UserError
    from compressor.recipe import parse_recipe
    with pytest.raises((UserError, ValueError), match="ratio"):
        parse_recipe({"model": "m", "stages": [{"method": method, "ratio": 0}]})
