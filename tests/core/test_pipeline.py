"""Integration on a tiny Llama built from a config: compress → save → load → same logits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import compressor
from compressor.api import compress
from compressor.errors import UserError
from compressor.recipe import load_recipe, parse_recipe


def _recipe(model_dir: Path, out: Path, stages, **extra):
    data = {"model": str(model_dir), "stages": stages, "output": str(out),
            "calibration": {"nsamples": 4, "seqlen": 64, "seed": 0}, **extra}
    return parse_recipe(data)


def _ids(n=24):
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 300, (2, n), generator=g)


@pytest.fixture(scope="module")
def svd_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "svd"
    res = compress(_recipe(tiny_model_dir, out, [{"method": "whitened-svd", "ratio": 0.3}],
                          eval={"datasets": ["builtin"], "seqlen": 64, "max_windows": 2}),
                   keep_model=True)
    return res


def test_output_folder_layout(svd_run):
    out = svd_run.output
    for f in ("config.json", "model.safetensors", "recipe.yaml", "report.json", "report.md",
              "tokenizer.json", "error_per_layer.png"):
        assert (out / f).is_file(), f
    cfg = json.loads((out / "config.json").read_text())
    mods = cfg["compression_config"]["modules"]
    assert len(mods) == 2 * 7
    assert all(s["parts"][0]["type"] == "lowrank" for s in mods.values())
    assert not list(out.parent.glob(".svd.*")), "temporary or resume folders left behind"


def test_load_gives_identical_logits(svd_run):
    loaded = compressor.load(svd_run.output)
    with torch.no_grad():
        a = svd_run.model(_ids()).logits
        b = loaded(_ids()).logits
    assert torch.equal(a, b)


def test_export_dense_loads_in_vanilla_transformers(svd_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from compressor.checkpoint import export_dense
    dst = export_dense(svd_run.output, tmp_path / "dense")
    vanilla = AutoModelForCausalLM.from_pretrained(dst)
    with torch.no_grad():
        a = svd_run.model(_ids()).logits
        b = vanilla(_ids()).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert "compression_config" not in json.loads((dst / "config.json").read_text())


def test_report_accounts_from_written_tensors(svd_run):
    rep = json.loads((svd_run.output / "report.json").read_text())
    t = rep["totals"]["targets"]
    # rank k = floor(0.7·m·n/(m+n)) per matrix: kept params ≤ 70% of the targets
    assert t["params_after"] <= 0.7 * t["params_before"] + 1
    assert t["params_after"] == sum(r["params_after"] for r in rep["modules"])
    assert rep["eval"][0]["partial"] is True and rep["eval"][0]["n_windows"] == 2
    for key in ("load", "data", "layers", "write", "eval"):
        assert key in rep["stage_seconds"]
    row = rep["modules"][0]
    for key in ("shape", "weight_rel_err", "output_rel_err", "bytes_before", "bytes_after", "seconds"):
        assert key in row
    assert 0 < row["output_rel_err"] < 1


def test_saved_recipe_reruns_identically(svd_run, tmp_path):
    r = load_recipe(svd_run.output / "recipe.yaml")
    r.output = str(tmp_path / "again")
    r.eval = None
    res = compress(r)
    h = lambda p: hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert h(res.output) == h(svd_run.output), "same recipe and seed must give byte-identical tensors"


def test_existing_output_needs_force(svd_run):
    r = load_recipe(svd_run.output / "recipe.yaml")
    r.output = str(svd_run.output)
    with pytest.raises(UserError, match="already exists.*--force"):
        compress(r)


def test_corrupt_checkpoint_is_a_clear_error(svd_run, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(svd_run.output, bad)
    p = bad / "model.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(UserError, match="corrupt"):
        compressor.load(bad)


def test_missing_key_is_refused(svd_run, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file
    bad = tmp_path / "bad2"
    shutil.copytree(svd_run.output, bad)
    sd = load_file(str(bad / "model.safetensors"))
    sd.pop(next(k for k in sd if k.endswith(".A")))
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(UserError, match="does not match"):   # the recorded sha256 first
        compressor.load(bad)
    with pytest.raises(UserError, match="missing keys"):
        compressor.load(bad, verify=False)


def test_interrupt_then_resume_equals_uninterrupted(tiny_model_dir, tmp_path, monkeypatch, svd_run):
    """Ctrl-C after layer 0 leaves no output folder; --resume finishes with the same bytes."""
    import compressor.core.pipeline as pl
    out = tmp_path / "interrupted"
    real = pl.compress_linear
    calls = {"n": 0}

    def flaky(name, layer_index, *a, **k):
        if layer_index == 1:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(name, layer_index, *a, **k)

    monkeypatch.setattr(pl, "compress_linear", flaky)
    recipe = load_recipe(svd_run.output / "recipe.yaml")
    recipe.output = str(out)
    recipe.eval = None
    with pytest.raises(KeyboardInterrupt):
        compress(recipe)
    assert not out.exists()
    assert (tmp_path / ".interrupted.resume" / "layer_0000.json").is_file()
    monkeypatch.setattr(pl, "compress_linear", real)
    res = compress(recipe, resume=True)
    assert res.report["resumed_layers"] == 1
    h = lambda p: hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert h(res.output) == h(svd_run.output)
    assert not (tmp_path / ".interrupted.resume").exists()


def _interrupted_at_layer_1(recipe, monkeypatch) -> None:
    """Run ``recipe`` with a Ctrl-C when layer 1 starts compressing (layer 0 checkpointed)."""
    import compressor.core.pipeline as pl
    real = pl.compress_linear

    def stop(name, layer_index, *a, **k):
        if layer_index == 1:
            raise KeyboardInterrupt
        return real(name, layer_index, *a, **k)

    monkeypatch.setattr(pl, "compress_linear", stop)
    with pytest.raises(KeyboardInterrupt):
        compress(recipe)
    monkeypatch.setattr(pl, "compress_linear", real)


def test_resume_with_other_recipe_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "o"
    _interrupted_at_layer_1(_recipe(tiny_model_dir, out, [{"method": "svd", "ratio": 0.3}]),
                            monkeypatch)
    with pytest.raises(UserError, match="different model, calibration data or recipe"):
        compress(_recipe(tiny_model_dir, out, [{"method": "svd", "ratio": 0.4}]), resume=True)


def test_rank_that_does_not_fit_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="rank"):
        compress(_recipe(tiny_model_dir, tmp_path / "x", [{"method": "svd", "rank": 10_000}]))
    assert not (tmp_path / "x").exists()


def _bf16_copy(model_dir: Path, dest: Path) -> Path:
    """The tiny model with a config that declares bfloat16 (its tensors stay float32)."""
    import shutil
    shutil.copytree(model_dir, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["dtype"] = "bfloat16"
    cfg.pop("torch_dtype", None)
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def test_storage_dtype_keeps_quantization_scales_in_their_format(tmp_path, tiny_model_dir):
    from safetensors import safe_open
    src = _bf16_copy(tiny_model_dir, tmp_path / "bf16-model")
    res = compress(_recipe(src, tmp_path / "rtn", [{"method": "rtn", "bits": 4, "group_size": 32}]))
    with safe_open(str(res.output / "model.safetensors"), "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
    scales = {v for k, v in dtypes.items() if k.endswith(".scale")}
    assert scales == {torch.float16}                      # the quant format's own dtype
    assert dtypes["model.norm.weight"] == torch.bfloat16  # uncompressed: the storage dtype
    assert any(v == torch.uint8 for v in dtypes.values())


def test_storage_dtype_is_the_checkpoints_own_and_resume_keeps_it(tmp_path, monkeypatch,
                                                                  tiny_model_dir):
    """A bfloat16 checkpoint compressed on CPU (math in float32) is written in bfloat16:
    factors and uncompressed tensors alike; the in-memory model evaluates the written values;
    an interrupted run resumes to the same bytes."""
    from safetensors import safe_open

    src = _bf16_copy(tiny_model_dir, tmp_path / "bf16-model")
    stages = [{"method": "svd", "ratio": 0.3}]
    res = compress(_recipe(src, tmp_path / "out", stages), keep_model=True)
    assert res.report["dtype"] == "float32" and res.report["storage_dtype"] == "bfloat16"
    with safe_open(str(res.output / "model.safetensors"), "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
    assert set(dtypes.values()) == {torch.bfloat16}, set(dtypes.values())
    saved = json.loads((res.output / "config.json").read_text())
    assert saved["compression_config"]["dtype"] == "bfloat16" and saved["dtype"] == "bfloat16"
    loaded = compressor.load(res.output, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(res.model(_ids()).logits, loaded(_ids()).logits)
    # float32 storage asked for explicitly: twice the bytes of the factors
    res32 = compress(_recipe(src, tmp_path / "out32", stages, storage_dtype="float32"))
    b16 = res.report["totals"]["targets"]["bytes_after"]
    assert res32.report["totals"]["targets"]["bytes_after"] == 2 * b16

    out = tmp_path / "resumed"
    _interrupted_at_layer_1(_recipe(src, out, stages), monkeypatch)
    again = compress(_recipe(src, out, stages), resume=True)
    assert again.report["resumed_layers"] == 1
    h = lambda p: hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert h(again.output) == h(res.output)


def test_bytes_before_counts_the_checkpoints_own_dtype(tiny_model_dir, tmp_path):
    """A bf16 checkpoint computed in float32: "before" is the bf16 file, not its fp32 copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    src = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(src)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(src)
    res = compress(_recipe(src, tmp_path / "out", [{"method": "rtn", "bits": 4, "group_size": 32}],
                          dtype="float32"))
    rep = json.loads((res.output / "report.json").read_text())
    t = rep["totals"]
    assert t["targets"]["bytes_before"] == 2 * t["targets"]["params_before"]
    assert t["model"]["bytes_before"] == 2 * t["model"]["params_before"]
    assert all(m["bytes_before"] == 2 * m["params_before"] for m in rep["modules"])
