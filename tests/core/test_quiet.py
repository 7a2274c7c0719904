"""Quiet by default: one line per numerics event class; per-module lines only under -v."""

from __future__ import annotations

import json
import sys

import pytest

from compressor import cli
from compressor.core.pipeline import numerics_lines, numerics_summary
from compressor.core.types import ModuleRecord


def _rec(name, **info):
    return ModuleRecord(name=name, layer=0, kind="q_proj", shape=(4, 4), methods=["x"],
                        params_before=16, params_after=8, bytes_before=64, bytes_after=32,
                        weight_rel_err=0.1, output_rel_err=0.1, seconds=0.0, info=info)


def test_numerics_summary_counts_modules_and_max():
    recs = [_rec("a", **{"eora.eig_floored": 27, "gptq.damp": 0.01}),
            _rec("b", **{"eora.eig_floored": 3, "gptq.damp_retries": 0}),
            _rec("c", **{"eora.eig_floored": 0, "gptq.damp_retries": 2})]
    s = numerics_summary(recs)
    assert s == {"eora.eig_floored": {"modules": 2, "max": 27, "total": 30, "max_module": "a"},
                 "gptq.damp_retries": {"modules": 1, "max": 2, "total": 2, "max_module": "c"}}
    assert numerics_summary([r.to_dict() for r in recs]) == s       # from report.json too
    assert numerics_lines(s) == ["eora.eig_floored: 2 modules (max 27)",
                                 "gptq.damp_retries: 1 module (max 2)"]


def _compress(args, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["svdc", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    return " ".join(out.err.split()), out.err


def test_default_run_prints_one_line_per_event_class(tiny_model_dir, tmp_path, capsys, monkeypatch):
    base = ["compress", str(tiny_model_dir), "--method", "eora", "--bits", "4", "--group-size", "32",
            "--rank", "8", "--nsamples", "2", "--seqlen", "32", "--eval", "builtin",
            "--eval-windows", "1", "--eval-dense"]
    text, raw = _compress([*base, "-o", str(tmp_path / "quiet")], capsys, monkeypatch)
    rep = json.loads((tmp_path / "quiet" / "report.json").read_text())
    assert rep["numerics"], "pick sizes that floor some eigenvalues (64 tokens < 96 channels)"
    for event, e in rep["numerics"].items():
        assert f"numerics {event}: {e['modules']} module" in text
        assert raw.count(f": {event} = ") == 0                  # no per-module line
    assert "model.layers.0.self_attn.q_proj:" not in text
    # the numbers come with context: dense ppl on the same windows, bits by storage
    e = rep["eval"][0]
    assert f"dense {e['dense_ppl']:.3f} on the same windows" in text
    split = rep["totals"]["targets"]["bits_split"]
    assert set(split) == {"codes", "scales", "lowrank"}
    assert split["codes"] == pytest.approx(4.0)
    assert sum(split.values()) == pytest.approx(rep["totals"]["targets"]["bits_per_weight"])
    assert f"codes {split['codes']:.3f} + scales {split['scales']:.3f} + low-rank" in text
    md = (tmp_path / "quiet" / "report.md").read_text()
    assert "## Numerics" in md and "Target bits per weight by storage" in md

    _, raw_v = _compress(["-v", *base, "-o", str(tmp_path / "loud")], capsys, monkeypatch)
    event = next(iter(rep["numerics"]))
    assert raw_v.count(f": {event} = ") == rep["numerics"][event]["modules"]
