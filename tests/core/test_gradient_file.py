"""--fisher-file: computed once and saved, reused on the next run, refused when stale."""

from __future__ import annotations

import pytest

from compressor.api import compress
from compressor.errors import UserError
from compressor.recipe import parse_recipe


def _recipe(model_dir, out, fisher, seed=0):
    return parse_recipe({"model": str(model_dir), "output": str(out),
                         "stages": [{"method": "fwsvd", "ratio": 0.3}],
                         "calibration": {"nsamples": 3, "seqlen": 32, "seed": seed},
                         "gradients": {"fisher_file": str(fisher)}})


def test_saved_then_reused_then_refused_when_stale(tiny_model_dir, tmp_path):
    fisher = tmp_path / "fisher.safetensors"
    first = compress(_recipe(tiny_model_dir, tmp_path / "a", fisher))
    assert fisher.is_file() and first.report["gradients"]["saved_to"] == str(fisher)
    second = compress(_recipe(tiny_model_dir, tmp_path / "b", fisher))
    assert second.report["gradients"]["loaded_from"] == str(fisher)
    assert "gradients" in first.report["stage_seconds"]
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    b = (tmp_path / "b" / "model.safetensors").read_bytes()
    assert a == b, "reused statistics must give the same tensors"
    with pytest.raises(UserError, match="recompute"):
        compress(_recipe(tiny_model_dir, tmp_path / "c", fisher, seed=5))


@pytest.mark.parametrize("case", ["folder", "dangling", "no-parent"])
def test_a_fisher_path_that_is_not_a_file_is_refused_before_any_work(tiny_model_dir, tmp_path,
                                                                     monkeypatch, case):
    import compressor.phases as phases
    monkeypatch.setattr(phases, "load", lambda *a: pytest.fail("loaded before refusing"))
    fisher = tmp_path / "f"
    if case == "folder":
        fisher.mkdir()
    elif case == "dangling":
        fisher.symlink_to(tmp_path / "gone")
    else:
        fisher = tmp_path / "nowhere" / "f.safetensors"
    with pytest.raises(UserError, match="--fisher-file") as e:
        compress(_recipe(tiny_model_dir, tmp_path / "out", fisher))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "gone").exists()
