"""Smoke test of the benchmark harness on the tiny Llama fixture: a 2-row matrix, in-process."""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path

import pytest
import yaml

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench  # noqa: E402
from bench_report import verdict  # noqa: E402


def _row(rid, ppl, kept, family="lowrank", status="ok"):
    return {"id": rid, "status": status, "ppl": ppl, "family": family,
            "totals": {"targets": {"bytes_kept": kept, "bits_per_weight": kept}}}


def test_verdict_is_computed_from_the_numbers():
    assert verdict(_row("m", 10.0, 0.8), [_row("b", 12.0, 0.8)]) == "yes"
    assert verdict(_row("m", 13.0, 0.8), [_row("b", 12.0, 0.8)]).startswith("**no** (loses to b")
    # beating one baseline is not enough
    assert "loses to c" in verdict(_row("m", 11.0, 0.8), [_row("b", 12.0, 0.8), _row("c", 10.0, 0.8)])
    # spending more budget than the baseline is flagged even when it wins
    assert "uses more budget" in verdict(_row("m", 10.0, 0.9), [_row("b", 12.0, 0.8)])
    assert verdict(None, [_row("b", 12.0, 0.8)]).startswith("n/a")
    assert verdict(_row("m", 10.0, 0.8), [None]).startswith("n/a (baseline not run")


@pytest.fixture(scope="module")
def bench_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    matrix = {
        "model": str(tiny_model_dir), "device": "cpu", "dtype": "float32",
        "calibration": {"dataset": "builtin", "nsamples": 2, "seqlen": 32, "seed": 0},
        "eval": {"dataset": "builtin", "seqlen": 32, "max_windows": 2},
        "rows": [{"id": "svd-r0.5", "family": "lowrank", "budget": "ratio 0.5",
                  "stages": [{"method": "svd", "ratio": 0.5}]},
                 {"id": "wsvd-r0.5", "family": "lowrank", "budget": "ratio 0.5",
                  "stages": [{"method": "whitened-svd", "ratio": 0.5}]},
                 {"id": "slow", "family": "lowrank", "stages": [{"method": "svd", "ratio": 0.5}],
                  "skip_on_cpu": "too slow here"}],
        "comparisons": [{"title": "Whitened SVD vs plain SVD",
                         "pairs": [{"method": "wsvd-r0.5", "baselines": ["svd-r0.5"]}]}],
    }
    mpath = tmp / "matrix.yaml"
    mpath.write_text(yaml.safe_dump(matrix))
    out, md = tmp / "bench", tmp / "BENCH.md"
    argv = ["--matrix", str(mpath), "--out", str(out), "--work", str(tmp / "work"), "--md", str(md),
            "--in-process"]
    assert bench.main(argv) == 0
    return argv, out, md


def test_rows_results_and_markdown(bench_run):
    _, out, md = bench_run
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert set(rows) == {"svd-r0.5", "wsvd-r0.5", "slow"}
    assert rows.pop("slow")["status"] == "skipped"     # recorded with its reason, never run
    for r in rows.values():
        assert r["status"] == "ok", r["error"]
        assert math.isfinite(r["ppl"]) and r["ppl"] > 1
        assert r["eval"]["partial"] and r["eval"]["n_windows"] == 2
        assert 0.4 < r["totals"]["targets"]["params_kept"] < 0.55
        assert r["machine"]["cpu_cores"] >= 1 and "torch" in r["versions"]
        assert r["stage_seconds"]["layers"] > 0
    text = md.read_text()
    a, b = rows["wsvd-r0.5"]["ppl"], rows["svd-r0.5"]["ppl"]
    line = next(ln for ln in text.splitlines() if ln.startswith("| wsvd-r0.5 | svd-r0.5 |"))
    assert line.rstrip(" |").endswith("yes") == (a < b)
    assert (out / "plot_lowrank_ppl_vs_params.png").is_file()
    assert (out / "plot_time_per_stage.png").is_file()
    assert "partial" in text and "skipped: too slow here" in text   # listed with its reason


def test_command_is_the_equivalent_cli_line(bench_run):
    from compressor.recipe.router import stages_from_flags
    _, out, _ = bench_run
    row = json.loads((out / "results.json").read_text())["rows"]["wsvd-r0.5"]
    argv = shlex.split(row["command"])
    assert argv[:4] == ["svdc", "compress", argv[2], "--method"] and "--ratio" in argv
    assert argv[argv.index("--eval-windows") + 1] == "2" and argv[argv.index("--nsamples") + 1] == "2"
    stages = stages_from_flags(argv[argv.index("--method") + 1], None,
                               {"ratio": float(argv[argv.index("--ratio") + 1])})
    assert stages == [{"method": "whitened-svd", "ratio": 0.5}]


def test_rerun_one_row_merges_by_id(bench_run):
    argv, out, _ = bench_run
    before = json.loads((out / "results.json").read_text())["rows"]
    assert bench.main(argv + ["--only", "svd-r0.5"]) == 0
    after = json.loads((out / "results.json").read_text())["rows"]
    assert set(after) == set(before)
    assert after["wsvd-r0.5"]["started_at"] == before["wsvd-r0.5"]["started_at"]
    assert after["svd-r0.5"]["ppl"] == pytest.approx(before["svd-r0.5"]["ppl"], rel=1e-6)
