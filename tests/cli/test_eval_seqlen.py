"""`svdc eval OUT` scores at the window length OUT's own report used, on the same windows
when the report's run was partial, and says so: it repeats the report's number."""

from __future__ import annotations

import json
import subprocess
import sys

from compressor.api import compress
from compressor.cli.evaluate import recorded_seqlen
from compressor.recipe import parse_recipe


def test_eval_repeats_the_report_seqlen(tiny_model_dir, tmp_path):
    out = compress(parse_recipe({
        "model": str(tiny_model_dir), "stages": [{"method": "rtn", "bits": 4, "group_size": 32}],
        "output": str(tmp_path / "o"), "calibration": {"nsamples": 2, "seqlen": 32, "seed": 0},
        "eval": {"datasets": ["builtin"], "seqlen": 48, "max_windows": 2}})).output
    assert recorded_seqlen(str(out))[0] == 48
    run = subprocess.run([sys.executable, "-m", "compressor", "eval", str(out), "--max-windows", "2",
                          "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["seqlen"] == 48
    assert "seqlen 48 (as in" in run.stderr
    run = subprocess.run([sys.executable, "-m", "compressor", "eval", str(out), "--max-windows", "1",
                          "--seqlen", "40", "--json"], capture_output=True, text=True)
    assert json.loads(run.stdout)["seqlen"] == 40


def test_eval_repeats_a_partial_report_on_its_windows(tiny_model_dir, tmp_path):
    out = compress(parse_recipe({
        "model": str(tiny_model_dir), "stages": [{"method": "rtn", "bits": 4, "group_size": 32}],
        "output": str(tmp_path / "o"), "calibration": {"nsamples": 2, "seqlen": 32, "seed": 0},
        "eval": {"datasets": ["builtin"], "seqlen": 48, "max_windows": 3}})).output
    reported = json.loads((out / "report.json").read_text())["eval"][0]
    assert reported["partial"] and reported["n_windows"] == 3
    run = subprocess.run([sys.executable, "-m", "compressor", "eval", str(out), "--json"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert (got["n_windows"], got["seqlen"]) == (3, 48)
    assert got["ppl"] == reported["ppl"]
    assert "the first 3 windows, as in the report" in run.stderr
    # told otherwise, or another window length: the whole split (here capped at 5 windows)
    run = subprocess.run([sys.executable, "-m", "compressor", "eval", str(out), "--seqlen", "40",
                          "--max-windows", "5", "--json"], capture_output=True, text=True)
    assert json.loads(run.stdout)["n_windows"] == 5


def test_without_a_report_the_default_is_2048(tmp_path):
    assert recorded_seqlen(str(tmp_path)) == (2048, "default; --seqlen to change")
    (tmp_path / "report.json").write_text("[not a report")
    assert recorded_seqlen(str(tmp_path))[0] == 2048
