"""Streamed loading and evaluation (compressor.load(stream=True), svdc eval --stream): the same
logits and perplexity as the whole model, each layer read once per layer-major evaluation.

Tolerance: 1e-5 relative on perplexity and 1e-5 absolute on float32 logits (on this CPU both
come out bit-identical: the same kernels run on the same values, only in another order of
windows and layers)."""

from __future__ import annotations

import json

import pytest
import torch

import compressor
from cli_runner import run_cli  # noqa: E402 (tests/ is on sys.path: conftest)
from compressor.api import compress
from compressor.checkpoint.stream_load import streamed_layers
from compressor.errors import UserError
from compressor.evaluate import evaluate
from compressor.models import load_model
from compressor.recipe import parse_recipe

STAGES = {"rtn4": [{"method": "rtn", "bits": 4, "group_size": 32}],
          "wsvd": [{"method": "whitened-svd", "ratio": 0.3}]}


@pytest.fixture(scope="module")
def outputs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("stream-load")
    out = {"dense": tiny_model_dir}
    for name, stages in STAGES.items():
        out[name] = compress(parse_recipe(_recipe(tiny_model_dir, root / name, stages))).output
    compress(parse_recipe(_recipe(tiny_model_dir, root / "rtn4-streamed", STAGES["rtn4"])), stream=True)
    out["rtn4-streamed"] = root / "rtn4-streamed"    # compress --stream's layout: a shard a layer
    return out


def _recipe(model, out, stages):
    return {"model": str(model), "output": str(out), "stages": stages,
            "calibration": {"dataset": "builtin", "nsamples": 2, "seqlen": 32, "seed": 0}}


def _whole(path):
    if (path / "report.json").exists():
        return compressor.load(path)
    return load_model(str(path), dtype="float32")[0]


def _layers_on_meta(model) -> bool:
    s = streamed_layers(model)
    return all(t.is_meta for layer in s.layers for t in layer.state_dict().values())


@pytest.mark.parametrize("which", ["dense", "rtn4", "wsvd", "rtn4-streamed"])
def test_streamed_perplexity_equals_the_whole_model(outputs, which):
    from transformers import AutoTokenizer
    path = outputs[which]
    tok = AutoTokenizer.from_pretrained(path)
    whole = evaluate(_whole(path), tok, "builtin", 64, max_windows=5)
    model = compressor.load(path, stream=True)
    streamed = evaluate(model, tok, "builtin", 64, max_windows=5)
    assert streamed["streamed"] == "layer-major" and streamed["n_windows"] == 5
    assert streamed["scored_tokens"] == whole["scored_tokens"]
    assert streamed["ppl"] == pytest.approx(whole["ppl"], rel=1e-5)
    assert streamed_layers(model).reads == 2      # each layer read once for all 5 windows
    assert _layers_on_meta(model)


@pytest.mark.parametrize("which", ["dense", "rtn4", "wsvd"])
def test_streamed_load_gives_the_same_logits(outputs, which):
    path = outputs[which]
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    model = compressor.load(path, stream=True)
    assert not next(model.parameters()).is_meta   # embeddings resident
    assert _layers_on_meta(model)
    with torch.no_grad():
        want = _whole(path)(ids).logits
        got = model(ids).logits
        again = model(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert torch.equal(got, again)
    assert streamed_layers(model).reads == 4      # read before each forward, freed after
    assert _layers_on_meta(model)




@pytest.mark.parametrize("which", ["dense", "rtn4"])
def test_svdc_eval_stream_equals_svdc_eval(outputs, which, capsys, monkeypatch):
    args = ["eval", str(outputs[which]), "--seqlen", "64", "--max-windows", "3", "--json"]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    code, out_s, err = run_cli([*args, "--stream"], capsys, monkeypatch)
    assert code == 0, err
    whole, streamed = json.loads(out), json.loads(out_s)
    assert streamed["ppl"] == pytest.approx(whole["ppl"], rel=1e-5)
    assert streamed["dtype"] == whole["dtype"] == "float32"


@pytest.mark.parametrize("stream", [False, True])
def test_svdc_eval_casts_an_output_to_the_asked_dtype(outputs, stream, capsys, monkeypatch):
    """--dtype applies to svdc outputs too (it used to be ignored for them)."""
    args = ["eval", str(outputs["rtn4"]), "--seqlen", "64", "--max-windows", "2", "--json",
            *(["--stream"] if stream else [])]
    code, out, err = run_cli([*args, "--dtype", "bfloat16"], capsys, monkeypatch)
    assert code == 0, err
    half = json.loads(out)
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    auto = json.loads(out)
    assert half["dtype"] == "bfloat16" and auto["dtype"] == "float32"   # auto on the CPU
    assert half["ppl"] != auto["ppl"]


def test_svdc_eval_stream_runs_tasks_through_the_hooks(outputs, capsys, monkeypatch):
    pytest.importorskip("lm_eval", reason="needs the eval extra: pip install 'svdc[eval]'")
    from pathlib import Path
    task = Path(__file__).resolve().parents[1] / "data" / "tasks" / "tiny_mc.yaml"
    args = ["eval", str(outputs["rtn4"]), "--tasks", str(task), "--limit", "8", "--json"]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    code, out_s, err = run_cli([*args, "--stream"], capsys, monkeypatch)
    assert code == 0, err
    a = json.loads(out)["tasks"]["tasks"][0]
    b = json.loads(out_s)["tasks"]["tasks"][0]
    assert b["metrics"] == a["metrics"] and b["n_examples"] == 8


def test_streaming_refusals_are_one_line(outputs, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["eval", str(outputs["dense"]), "--stream", "--trust-remote-code"],
                           capsys, monkeypatch)
    assert code == 2 and "cannot stream" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(UserError, match="no config.json"):
        compressor.load(tmp_path, stream=True)
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(outputs["rtn4"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["compression_config"]["modules"].pop("model.layers.1.mlp.down_proj")
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="does not match its config"):
        compressor.load(bad, stream=True)
