"""The one pass engine's matrix on a tiny Llama: every method (and heal, WeLore allocation,
true-sequential GPTQ) in memory and with ``--stream`` gives bit-identical tensors and the same
report; the streamed gradient pass equals the whole-model one; a data-free run does no forward
pass and writes what the calibrated run writes; a streamed run killed mid-way resumes to the
bytes of an uninterrupted one."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import compressor
from compressor.api import compress
from compressor.recipe import parse_recipe
from engine_matrix import MATRIX   # tests/ is on sys.path (conftest)

ROOT = Path(__file__).resolve().parents[2]

def _data(model_dir, out, stages, **kw):
    return {"model": str(model_dir), "stages": stages, "output": str(out),
            "calibration": {"dataset": "builtin", "nsamples": 4, "seqlen": 64, "seed": 0},
            "eval": {"datasets": ["builtin"], "seqlen": 64, "max_windows": 2}, **kw}


def _state(folder: Path) -> dict[str, torch.Tensor]:
    return compressor.load(folder).state_dict()


def _same_tensors(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def _same_files(a: Path, b: Path) -> None:
    """The same weight files, byte for byte, and the same index: one layout in every mode."""
    assert _sha(a) == _sha(b)
    index = "model.safetensors.index.json"
    assert (a / index).is_file() == (b / index).is_file()
    if (a / index).is_file():
        assert (a / index).read_text() == (b / index).read_text()


_VOLATILE = {"seconds", "stage_seconds", "peak_memory", "command", "machine", "model",
             "gradients", "streamed", "heal", "versions"}


@pytest.mark.parametrize("name", list(MATRIX))
def test_in_memory_and_streamed_are_the_same_run(tiny_model_dir, tmp_path, name):
    stages = MATRIX[name]
    whole = compress(parse_recipe(_data(tiny_model_dir, tmp_path / "whole", stages)))
    streamed = compress(parse_recipe(_data(tiny_model_dir, tmp_path / "stream", stages)),
                        stream=True)
    _same_tensors(whole.output, streamed.output)
    _same_files(whole.output, streamed.output)
    ra, rb = whole.report, streamed.report
    assert rb["streamed"] is True and ra["streamed"] is False
    for k in set(ra) - _VOLATILE:
        if k == "modules":
            strip = lambda rows: [{f: v for f, v in r.items() if f != "seconds"} for r in rows]  # noqa: E731
            assert strip(ra[k]) == strip(rb[k])
        elif k == "eval":   # a streamed output is scored layer-major: same windows and tokens
            for ea, eb in zip(ra[k], rb[k]):
                assert abs(ea["ppl"] - eb["ppl"]) <= 1e-5 * ea["ppl"]
                drop = {"elapsed_s", "streamed", "ppl", "nll", "mean_nll"}
                assert {f: v for f, v in ea.items() if f not in drop} == \
                    {f: v for f, v in eb.items() if f not in drop}
        elif k == "recipe":
            assert {**ra[k], "output": None} == {**rb[k], "output": None}
        else:
            assert ra[k] == rb[k], k
    for f in ("report.md", "report.json", "recipe.yaml", "config.json"):
        assert (streamed.output / f).is_file()
    assert not (tmp_path / ".stream.resume").exists()


@pytest.mark.parametrize("name", ["gptq", "heal"])
def test_large_outputs_are_one_shard_per_layer_in_both_modes(tiny_model_dir, tmp_path,
                                                              monkeypatch, name):
    """Above the shard size every mode writes a shard per decoder layer plus one for the rest
    (a streamed run links its checkpoints in; in memory, or after heal, from memory): the same
    files, and the folder loads."""
    import compressor.checkpoint.save as save
    monkeypatch.setattr(save, "SHARD_BYTES", 1)
    stages = MATRIX[name]
    whole = compress(parse_recipe(_data(tiny_model_dir, tmp_path / "whole", stages)))
    streamed = compress(parse_recipe(_data(tiny_model_dir, tmp_path / "stream", stages)),
                        stream=True)
    names = sorted(p.name for p in whole.output.glob("*.safetensors"))
    assert names == ["layer-00000.safetensors", "layer-00001.safetensors",
                     "model-outside.safetensors"]
    _same_files(whole.output, streamed.output)
    _same_tensors(whole.output, streamed.output)
    index = json.loads((whole.output / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(names)
    assert all(k.startswith("model.layers.1.") for k, v in index["weight_map"].items()
               if v == "layer-00001.safetensors")


def test_streamed_gradients_equal_the_whole_model_pass(tiny_model_dir):
    from compressor.checkpoint.stream_load import open_streamed
    from compressor.core.context import PassContext
    from compressor.core.distributed import Distributed
    from compressor.core.gradients import gradient_stats
    from compressor.core.sources import StreamedLayers
    from compressor.core.streamed_gradients import streamed_gradient_stats
    from compressor.models import decoder_layers, load_model, target_linears
    want = {"fisher", "fisher_rows", "fisher_cols", "grad_absmean"}
    model, _, _ = load_model(str(tiny_model_dir), dtype="float32")
    path, layers = decoder_layers(model)
    names = [f"{path}.{i}.{rel}" for i, layer in enumerate(layers) for rel in target_linears(layer)]
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(3, model.config.vocab_size, (3, 48), generator=g)
    ref, _ = gradient_stats(model, windows, names, want, "cpu")
    sk, _, _, reader = open_streamed(str(tiny_model_dir), "float32", torch.device("cpu"))
    spath, slayers = decoder_layers(sk)
    ctx = PassContext(device=torch.device("cpu"), seed=0, storage_dtype=torch.float32,
                      dist=Distributed())
    got, info = streamed_gradient_stats(sk, spath, slayers, windows, names, want, ctx,
                                        StreamedLayers(sk, spath, reader), Path("/nonexistent"))
    assert info["boundaries"]["bytes"] > 0
    for n in names:
        for s in want:
            a, b = ref[n][s], got[n][s]
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(a.abs().max())), (n, s)


def test_data_free_rtn_runs_no_forward_and_writes_the_same_tensors(tiny_model_dir, tmp_path,
                                                                   monkeypatch):
    import compressor.core.walk as walk
    stages = MATRIX["rtn"]
    calibrated = compress(parse_recipe({**_data(tiny_model_dir, tmp_path / "cal", stages),
                                        "output_errors": True}))
    assert calibrated.report["calibration"]["ran"] is True

    def no_forward(*a, **k):
        raise AssertionError("a data-free run captured layer inputs")
    monkeypatch.setattr(walk, "capture_inputs", no_forward)
    data = _data(tiny_model_dir, tmp_path / "free", stages)
    data.pop("eval")
    free = compress(parse_recipe(data))
    assert free.report["calibration"]["ran"] is False
    assert all(m["output_rel_err"] is None for m in free.report["modules"])
    _same_tensors(calibrated.output, free.output)


def _sha(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob("*.safetensors"))}


def test_kill_9_then_resume_streamed_gives_the_same_bytes(tiny_model_dir, tmp_path):
    args = ["compress", str(tiny_model_dir), "--method", "gptq", "--bits", "4", "--group-size",
            "32", "--calib", "builtin", "--nsamples", "4", "--seqlen", "64", "--stream"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = lambda extra, **e: subprocess.run([sys.executable, "-m", "compressor", *args, *extra],  # noqa: E731
                                           env={**env, **e}, capture_output=True, text=True,
                                           timeout=600)
    ok = run(["-o", str(tmp_path / "ref")])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = run(["-o", str(tmp_path / "out")], SVDC_FAULT_KILL="0:1")
    assert bad.returncode == -9, bad.stdout + bad.stderr
    assert (tmp_path / ".out.resume" / "layer_0000.json").is_file()
    assert not (tmp_path / "out").exists()
    again = run(["-o", str(tmp_path / "out"), "--resume"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads((tmp_path / "out" / "report.json").read_text())["resumed_layers"] == 1
    assert _sha(tmp_path / "ref") == _sha(tmp_path / "out")
