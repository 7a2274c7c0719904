"""Zero-shot tasks through lm-eval on the model svdc loaded (a local 4-choice task, offline)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cli_runner import run_cli  # noqa: E402 (tests/ is on sys.path: conftest)
from compressor.api import compress
from compressor.errors import UserError
from compressor.recipe import parse_recipe

pytest.importorskip("lm_eval", reason="needs the eval extra: pip install 'svdc[eval]'")

TASK_DIR = Path(__file__).resolve().parent / "data" / "tasks"
TASK_YAML = TASK_DIR / "tiny_mc.yaml"




@pytest.fixture(scope="module")
def rtn_run(tiny_model_dir, tmp_path_factory):
    """The tiny Llama, RTN 3-bit: far enough from the dense model to change its answers."""
    out = tmp_path_factory.mktemp("tasks") / "rtn3"
    recipe = parse_recipe({
        "model": str(tiny_model_dir), "output": str(out),
        "stages": [{"method": "rtn", "bits": 3, "group_size": 32}],
        "calibration": {"nsamples": 2, "seqlen": 32, "seed": 0},
        "eval": {"datasets": ["builtin"], "seqlen": 32, "max_windows": 1,
                 "tasks": [str(TASK_YAML)], "task_limit": 10, "dense": True}})
    return compress(recipe)


def _lm_eval_direct(model_dir: Path, monkeypatch) -> dict:
    """lm-eval's own path: `hf` model loaded from a folder, the task YAML by path (its
    data_files relative to the working directory, as lm-eval resolves them)."""
    import lm_eval
    monkeypatch.chdir(TASK_DIR)
    out = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(model_dir), "dtype": "float32"},
                                  tasks=[str(TASK_YAML)], device="cpu", batch_size=8, log_samples=False)
    return out["results"]["svdc_tiny_mc"]


def test_svdc_eval_tasks_equals_lm_eval_on_a_dense_export(rtn_run, tmp_path, capsys, monkeypatch):
    from compressor.checkpoint import export_dense
    dense = export_dense(rtn_run.output, tmp_path / "dense")
    code, out, err = run_cli(["eval", str(rtn_run.output), "--tasks", str(TASK_YAML), "--json"],
                             capsys, monkeypatch)
    assert code == 0, err
    res = json.loads(out)
    assert res["perplexity"] == []            # only tasks were asked for
    row = res["tasks"]["tasks"][0]
    assert row["task"] == "svdc_tiny_mc" and row["n_examples"] == row["total_examples"] == 24
    assert row["partial"] is False and row["label"] == "full"
    direct = _lm_eval_direct(dense, monkeypatch)
    assert row["metrics"]["acc"] == pytest.approx(direct["acc,none"], abs=1e-12)
    assert row["metrics"]["acc_norm"] == pytest.approx(direct["acc_norm,none"], abs=1e-12)
    assert row["stderr"]["acc"] == pytest.approx(direct["acc_stderr,none"], abs=1e-12)


def test_compress_eval_tasks_go_into_the_report(rtn_run):
    rep = json.loads((rtn_run.output / "report.json").read_text())
    row = rep["tasks"]["tasks"][0]
    assert rep["tasks"]["limit"] == 10 and rep["tasks"]["partial"] is True
    assert row["n_examples"] == 10 and row["total_examples"] == 24
    assert row["label"] == "partial (10/24 examples)"
    dense_row = rep["dense_eval"]["tasks"]["tasks"][0]
    assert set(dense_row["metrics"]) == set(row["metrics"]) == {"acc", "acc_norm"}
    # dense perplexity on the very same windows, beside the compressed one
    e, d = rep["eval"][0], rep["dense_eval"]["perplexity"][0]
    assert e["dense_ppl"] == d["ppl"] and d["n_windows"] == e["n_windows"] == 1
    assert d["revision"] == e["revision"] and e["ppl"] != d["ppl"]
    md = (rtn_run.output / "report.md").read_text()
    assert "## Tasks (lm-eval" in md and "limit 10 per task: partial" in md
    assert f"| svdc_tiny_mc | acc | {row['metrics']['acc']:.4f} |" in md
    assert "dense ppl" in md
    # bits split: 3-bit codes + fp16/fp32 scales, nothing low-rank; sums to bits/weight
    t = rep["totals"]["targets"]
    assert set(t["bits_split"]) == {"codes", "scales"}
    assert t["bits_split"]["codes"] == pytest.approx(3.0)
    assert sum(t["bits_split"].values()) == pytest.approx(t["bits_per_weight"])


def test_limit_labels_a_partial_run(rtn_run, capsys, monkeypatch):
    code, _, err = run_cli(["eval", str(rtn_run.output), "--tasks", str(TASK_YAML), "--limit", "5",
                              "--dataset", "builtin", "--max-windows", "1", "--seqlen", "32"],
                             capsys, monkeypatch)
    assert code == 0, err
    text = " ".join(err.split())
    assert "yes (5 of 24)" in text and "svdc_tiny_mc" in text and "perplexity" in text


def test_missing_lm_eval_names_the_extra(rtn_run, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)      # import lm_eval -> ImportError
    code, _, err = run_cli(["eval", str(rtn_run.output), "--tasks", "arc_easy"], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err
    assert "pip install 'svdc[eval]'" in " ".join(err.split())


def test_bad_task_inputs_are_one_line_errors(tiny_model_dir, tmp_path, monkeypatch):
    """Unknown names get the nearest ones; a Hub task without network says so in one line."""
    import datasets
    import huggingface_hub.constants
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compressor.tasks import run_tasks
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(UserError, match=r"unknown lm-eval task 'arc_eassy' \(did you mean arc_easy"):
        run_tasks(model, tok, ["arc_eassy"])
    with pytest.raises(UserError, match="task YAML .*nope.yaml' not found"):
        run_tasks(model, tok, [str(tmp_path / "nope.yaml")])
    # no network here either way; offline mode makes the failure immediate
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as e:
        run_tasks(model, tok, ["arc_easy"], limit=2)
    msg = str(e.value)
    assert "\n" not in msg and "task 'arc_easy' cannot fetch its dataset" in msg
    assert "local task YAML" in msg
