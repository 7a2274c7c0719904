"""Issue 13: nothing lost, nothing let in. Each case asserts the exit code and the first line
of the message; the ``world`` fixture asserts afterwards that the input model, a sibling file
and an earlier output are byte-identical (sha256) to what they were before."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

FAST = ["--nsamples", "2", "--seqlen", "32"]


def compress_args(world, *extra, method="rtn"):
    return ["compress", world.model, "--method", method, *FAST, *extra]


# ---------------------------------------------------------------- output folders / --force

def test_force_never_replaces_the_model(world, run, before_loading):
    r = run(compress_args(world, "-o", world.model, "--force"))
    assert r.code == 2
    assert r.first_line.startswith(f"error: output {world.model} is an input of this run")


def test_force_never_replaces_a_folder_holding_the_model(world, run, before_loading):
    models = world.root / "models"
    shutil.copytree(world.model, models / "m")
    (models / "unrelated.txt").write_text("keep me")
    before = {str(p): p.read_bytes() for p in models.rglob("*") if p.is_file()}
    recipe = world.root / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": str(models / "m"), "output": str(models),
                                      "stages": [{"method": "rtn"}]}))
    r = run(["run", recipe, "--force"])
    assert r.code == 2
    assert r.first_line.startswith(f"error: output {models} contains an input of this run")
    assert {str(p): p.read_bytes() for p in models.rglob("*") if p.is_file()} == before


def test_force_never_replaces_the_recipe_or_calibration_folder(world, run, before_loading):
    inputs = world.root / "inputs"
    inputs.mkdir()
    (inputs / "calib.txt").write_text("some calibration text " * 50)
    recipe = inputs / "r.yaml"
    recipe.write_text(yaml.safe_dump({"stages": [{"method": "rtn"}]}))
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    r = run(["compress", world.model, "--recipe", recipe, "-o", inputs, "--force"])
    assert r.code == 2 and r.first_line.startswith(f"error: output {inputs} contains an input")
    (inputs / "r.yaml").unlink()
    r = run(compress_args(world, "--calib", inputs / "calib.txt", "-o", inputs, "--force"))
    assert r.code == 2 and r.first_line.startswith(f"error: output {inputs} contains an input")
    assert (inputs / "calib.txt").read_bytes() == before["calib.txt"]


def test_export_never_replaces_its_source(world, run, before_loading):
    r = run(["export", world.prior, "--format", "dense", "-o", world.prior, "--force"])
    assert r.code == 2
    assert r.first_line.startswith(f"error: output {world.prior} is an input of this run")


@pytest.mark.parametrize("command", ["compress", "export"])
def test_force_refuses_a_folder_that_is_not_an_svdc_output(world, run, before_loading, command):
    other = world.root / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8 not svdc's")
    args = (compress_args(world) if command == "compress"
            else ["export", world.prior, "--format", "dense"])
    r = run([*args, "-o", other, "--force"])
    assert r.code == 2
    assert r.first_line.startswith(f"error: output folder {other} exists and is not an svdc output")
    assert (other / "cat.jpg").read_bytes() == b"\xff\xd8 not svdc's"


def test_existing_output_without_force_is_refused_before_loading(world, run, before_loading):
    r = run(compress_args(world, "-o", world.prior))
    assert r.code == 2
    assert r.first_line.startswith(f"error: output folder {world.prior} already exists; pass --force")


def test_force_replaces_an_earlier_svdc_output(world, run):
    earlier = world.root / "earlier"
    shutil.copytree(world.prior, earlier)
    (earlier / "stale-plot.png").write_bytes(b"old")
    r = run(compress_args(world, "--bits", "3", "-o", earlier, "--force"))
    assert r.code == 0, r.err
    assert not (earlier / "stale-plot.png").exists()
    assert "compression_config" in json.loads((earlier / "config.json").read_text())


def test_force_replaces_an_empty_folder(world, run):
    empty = world.root / "empty"
    empty.mkdir()
    r = run(compress_args(world, "-o", empty, "--force"))
    assert r.code == 0, r.err
    assert (empty / "model.safetensors").is_file()


@pytest.mark.parametrize("out, first", [
    (".", "error: output . is the current folder"),
    ("..", "error: output .. is an ancestor of the current folder"),
])
def test_output_may_not_be_the_current_folder_or_above(world, run, before_loading, out, first):
    r = run(compress_args(world, "-o", out, "--force"))
    assert r.code == 2 and r.first_line.startswith(first)
    assert list(world.root.glob(".*")) == []      # no hidden leftovers beside it


def test_output_that_is_a_file(world, run, before_loading):
    r = run(compress_args(world, "-o", world.sibling, "--force"))
    assert r.code == 2
    assert r.first_line.startswith(f"error: output path {world.sibling} exists and is not a folder")


def test_output_below_a_file_is_impossible(world, run, before_loading):
    r = run(compress_args(world, "-o", world.sibling / "out"))
    assert r.code == 2
    assert r.first_line.startswith(f"error: cannot write output {world.sibling / 'out'}: "
                                   f"{world.sibling} is a file")


def test_output_in_an_unwritable_place(world, run, before_loading):
    r = run(compress_args(world, "-o", "/proc/svdc-test/out"))
    assert r.code == 2
    assert r.first_line.startswith("error: cannot write output /proc/svdc-test/out: /proc is not writable")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_output_in_a_read_only_folder(world, run, before_loading):
    ro = world.root / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = run(compress_args(world, "-o", ro / "out"))
    finally:
        ro.chmod(0o755)
    assert r.code == 2 and r.first_line.startswith(f"error: cannot write output {ro / 'out'}")


# ---------------------------------------------------------------- one run per output

def test_a_second_run_on_a_locked_output_fails_at_once(world, run, before_loading):
    from compressor.safety.lock import OutputLock
    out = world.root / "out"
    with OutputLock(out):
        r = run(compress_args(world, "-o", out))
    assert r.code == 2
    assert r.first_line.startswith(f"error: output {out} is in use by another svdc run "
                                   f"(PID {os.getpid()} on {socket.gethostname()}")
    assert not out.exists()


def test_a_stale_lock_of_a_dead_run_is_taken_over(world, run):
    from compressor.safety.lock import lock_path_for
    out = world.root / "out"
    lock = lock_path_for(out)
    lock.write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    r = run(compress_args(world, "-o", out))
    assert r.code == 0, r.err
    assert "taking over the lock" in " ".join(r.err.split())
    assert (out / "model.safetensors").is_file() and not lock.exists()


# ---------------------------------------------------------------- resume

def _interrupt_after_first_layer(monkeypatch):
    from compressor.core.resume import LayerCheckpoints
    real = LayerCheckpoints.save_layer

    def save_then_stop(self, i, *a, **k):
        real(self, i, *a, **k)
        raise KeyboardInterrupt
    monkeypatch.setattr(LayerCheckpoints, "save_layer", save_then_stop)


def test_interrupt_offers_resume_only_when_layers_were_checkpointed(world, run, monkeypatch):
    import compressor.data as data
    out = world.root / "out"

    def stop(*a, **k):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(data, "calibration_windows", stop)
        r = run(compress_args(world, "-o", out, method="gptq"))   # rtn alone reads no text
    assert r.code == 130
    assert r.first_line == "interrupted: no output folder was written"
    with monkeypatch.context() as m:
        _interrupt_after_first_layer(m)
        r = run(compress_args(world, "-o", out))
    assert r.code == 130
    assert r.first_line == ("interrupted: no output folder was written; 1 finished layer is "
                            "checkpointed, rerun the same command with --resume to continue")
    r = run(compress_args(world, "-o", out, "--resume"))
    assert r.code == 0, r.err


def _interrupted_run(world, run, monkeypatch, *extra) -> Path:
    out = world.root / "out"
    with monkeypatch.context() as m:
        _interrupt_after_first_layer(m)
        assert run(compress_args(world, *extra, "-o", out)).code == 130
    return out.parent / f".{out.name}.resume"


def test_resume_checks_the_fingerprint_of_every_layer(world, run, monkeypatch):
    """A layer another run (here --bits 3) wrote into the folder is refused, not mixed in."""
    resume_dir = _interrupted_run(world, run, monkeypatch, "--bits", "3")
    foreign = json.loads((resume_dir / "layer_0000.json").read_text())["fingerprint"]
    _interrupted_run(world, run, monkeypatch, "--bits", "4")
    layer = resume_dir / "layer_0000.json"
    meta = json.loads(layer.read_text())
    meta["fingerprint"] = foreign
    layer.write_text(json.dumps(meta))
    r = run(compress_args(world, "--bits", "4", "-o", world.root / "out", "--resume"))
    assert r.code == 2
    assert r.first_line.startswith(f"error: cannot resume: {layer} was made by a different run")


@pytest.mark.parametrize("victim", ["layer_0000.safetensors", "layer_0000.json", "fingerprint.json"])
def test_corrupt_resume_checkpoint_names_the_file(world, run, monkeypatch, victim):
    resume_dir = _interrupted_run(world, run, monkeypatch)
    (resume_dir / victim).write_bytes((resume_dir / victim).read_bytes()[:20])
    r = run(compress_args(world, "-o", world.root / "out", "--resume"))
    assert r.code == 2
    assert r.first_line.startswith(f"error: cannot resume: checkpoint {resume_dir / victim} is corrupt")
    assert r.first_line.endswith("rerun without --resume to start over")


# ---------------------------------------------------------------- models load as data

def _with_remote_code(world) -> Path:
    folder = world.root / "custom"
    shutil.copytree(world.model, folder)
    marker = world.root / "code-ran"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_a_model_folder_needing_its_code_is_refused(world, run):
    folder = _with_remote_code(world)
    r = run(["compress", folder, "--method", "rtn", *FAST, "-o", world.root / "out"])
    assert r.code == 2
    assert r.first_line.startswith(f"error: '{folder}' needs its own Python code (config.json has "
                                   f"an auto_map); svdc loads models as data only: pass --trust-remote-code")
    assert not (world.root / "code-ran").exists()


def test_transformers_is_told_no_remote_code_and_safetensors_only(world, monkeypatch):
    """Every from_pretrained call gets trust_remote_code=False (and the model use_safetensors)."""
    import transformers

    from compressor.models import load_model
    calls = {}

    def spy(cls_name, real):
        def f(*a, **k):
            calls[cls_name] = k
            return real(*a, **k)
        return f
    for name in ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"):
        cls = getattr(transformers, name)
        monkeypatch.setattr(cls, "from_pretrained", spy(name, cls.from_pretrained))
    load_model(str(world.model))
    assert {n: k.get("trust_remote_code") for n, k in calls.items()} == {
        "AutoConfig": False, "AutoTokenizer": False, "AutoModelForCausalLM": False}
    assert calls["AutoModelForCausalLM"]["use_safetensors"] is True
    folder = _with_remote_code(world)
    calls.clear()
    with pytest.raises(Exception):   # the opt-in reaches transformers (which then needs the class)
        load_model(str(folder), trust_remote_code=True)
    assert calls["AutoConfig"]["trust_remote_code"] is True


@pytest.mark.parametrize("adapter", [False, True])
def test_pickle_weights_are_refused(world, run, adapter):
    folder = world.root / "pickled"
    shutil.copytree(world.model, folder)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    if adapter:   # an unrelated .safetensors must not let the pickle through
        save_file({"x": torch.zeros(2)}, str(folder / "adapter_model.safetensors"))
    r = run(["compress", folder, "--method", "rtn", *FAST, "-o", world.root / "out"])
    assert r.code == 2
    assert r.first_line.startswith(f"error: folder '{folder.resolve()}' holds pickled weights "
                                   f"(pytorch_model.bin), which svdc never loads")
    assert "convert them to safetensors" in r.first_line


def test_hub_downloads_fetch_no_python_or_pickle():
    from huggingface_hub.utils import filter_repo_objects

    from compressor.models.resolve import HUB_ALLOW, HUB_IGNORE
    files = ["config.json", "model.safetensors", "tokenizer.json", "modeling_x.py",
             "configuration_x.py", "pytorch_model.bin", "sub/evil.py", "training_args.pkl"]
    kept = set(filter_repo_objects(files, allow_patterns=HUB_ALLOW, ignore_patterns=HUB_IGNORE))
    assert kept == {"config.json", "model.safetensors", "tokenizer.json"}


# ---------------------------------------------------------------- integrity

def _tampered(world, name="tampered", change=None) -> Path:
    folder = world.root / name
    shutil.copytree(world.prior, folder)
    path = folder / "model.safetensors"
    state = load_file(str(path))
    if change is None:
        key = next(k for k, v in state.items() if v.dtype == torch.uint8)
        state[key] = state[key] ^ 1          # flipped codes: still a valid file
    else:
        change(state)
    save_file(state, str(path), metadata={"format": "pt"})
    return folder


def test_config_records_the_sha256_of_every_weight_file(world):
    from compressor.models.integrity import file_sha256
    cc = json.loads((world.prior / "config.json").read_text())["compression_config"]
    assert cc["weights_sha256"] == {"model.safetensors": file_sha256(world.prior / "model.safetensors")}


@pytest.mark.parametrize("command", ["eval", "export"])
def test_tampered_weights_are_refused(world, run, command):
    folder = _tampered(world)
    args = (["eval", folder, "--max-windows", "1", "--seqlen", "32"] if command == "eval"
            else ["export", folder, "--format", "dense", "-o", world.root / "dense"])
    r = run(args)
    assert r.code == 2
    assert r.first_line.startswith(f"error: {folder / 'model.safetensors'}: sha256 ")
    assert "does not match" in r.first_line and "--no-verify" in r.first_line


def test_compressor_load_verifies_and_no_verify_skips(world, run):
    import compressor
    from compressor.errors import UserError
    folder = _tampered(world)
    with pytest.raises(UserError, match="does not match"):
        compressor.load(folder)
    assert compressor.load(folder, verify=False) is not None
    r = run(["eval", folder, "--max-windows", "1", "--seqlen", "32", "--no-verify"])
    assert r.code == 0, r.err


def test_inspect_shows_and_verifies_the_hashes(world, run):
    from compressor.models.integrity import file_sha256
    r = run(["inspect", world.prior, "--verify"])
    assert r.code == 0, r.err
    text = " ".join(r.err.split())
    assert f"sha256 model.safetensors: {file_sha256(world.prior / 'model.safetensors')}" in text
    assert "1 weight file(s) match" in text
    r = run(["inspect", _tampered(world), "--verify"])
    assert r.code == 2 and "does not match" in r.err


def test_corrupt_floats_give_one_line_not_overflow(world, run):
    def blow_up(state):
        key = next(k for k in state if "embed_tokens" in k)
        state[key] = torch.randn(state[key].shape, generator=torch.Generator().manual_seed(0)) * 3e38
    folder = _tampered(world, change=blow_up)
    r = run(["eval", folder, "--max-windows", "1", "--seqlen", "32", "--no-verify"])
    assert r.code == 2
    assert r.first_line.startswith("error: the model's logits are not finite")


# ---------------------------------------------------------------- user-fixable, not internal

@pytest.mark.parametrize("command", ["eval", "export"])
def test_corrupt_config_json(world, run, command):
    folder = world.root / "broken"
    shutil.copytree(world.prior, folder)
    (folder / "config.json").write_text('{"compression_config": {')
    args = (["eval", folder, "--max-windows", "1"] if command == "eval"
            else ["export", folder, "--format", "dense", "-o", world.root / "dense"])
    r = run(args)
    assert r.code == 2
    assert r.first_line.startswith(f"error: {folder / 'config.json'} is not valid JSON")


def test_wrong_typed_config_field(world, run):
    folder = world.root / "typed"
    shutil.copytree(world.prior, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_size"] = "big"
    (folder / "config.json").write_text(json.dumps(cfg))
    r = run(["eval", folder, "--max-windows", "1"])
    assert r.code == 2
    assert r.first_line.startswith(f"error: {folder}/config.json: a field is missing or has the wrong type")
    model = world.root / "typed-model"
    shutil.copytree(world.model, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["num_hidden_layers"] = "two"
    (model / "config.json").write_text(json.dumps(cfg))
    r = run(["compress", model, "--method", "rtn", *FAST, "-o", world.root / "out"])
    assert r.code == 2
    # refused before transformers reads it, naming the field (models/integrity.check_config)
    assert r.first_line.startswith(f"error: '{model.resolve()}/config.json': num_hidden_layers = "
                                   "'two' must be a positive integer")
    assert not (world.root / "out").exists()


def test_huge_nsamples_is_refused_before_calibrating(world, run, monkeypatch):
    import compressor.data as data
    monkeypatch.setattr(data, "calibration_windows", lambda *a, **k: pytest.fail("calibrated"))
    r = run(["compress", world.model, "--method", "gptq", "--nsamples", "100000000", "--seqlen", "32",
             "-o", world.root / "out"])
    assert r.code == 2
    assert r.first_line.startswith("error: --nsamples 100000000 x --seqlen 32 needs about ")
    assert "GiB available: lower --nsamples or --seqlen" in r.first_line


def test_disk_full_is_one_line_and_leaves_nothing(world, run, monkeypatch):
    import errno

    import compressor.checkpoint.save as save
    out = world.root / "out"

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(out) + "/model.safetensors")
    monkeypatch.setattr(save, "write_safetensors", full)   # the final write; layers are kept
    r = run(compress_args(world, "-o", out))
    assert r.code == 2
    assert r.first_line.startswith("error: no space left on the device writing ")
    assert r.first_line.endswith("; 2 finished layers are checkpointed, rerun the same command "
                                 "with --resume to continue")
    assert not out.exists() and list(world.root.glob(".out*")) == [world.root / ".out.resume"]


def test_safetensors_disk_full_is_recognized():
    from compressor.safety.oserrors import user_message

    class SafetensorError(Exception):
        pass
    e = SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
    assert user_message(e).startswith("no space left on the device")
    assert user_message(ValueError("x")) is None


def _inspect_cases(world):
    empty = world.root / "empty"
    empty.mkdir()
    corrupt = world.root / "corrupt"
    shutil.copytree(world.prior, corrupt)
    (corrupt / "config.json").write_text("{not json")
    malformed = world.root / "malformed"
    shutil.copytree(world.prior, malformed)
    cfg = json.loads((malformed / "config.json").read_text())
    cfg["compression_config"]["modules"] = 5
    (malformed / "config.json").write_text(json.dumps(cfg))
    return {
        "file": (world.sibling, 2, f"error: {world.sibling} is a file"),
        "missing": (world.root / "nope", 2, f"error: {world.root / 'nope'} does not exist"),
        "empty": (empty, 2, f"error: {empty}: no config.json"),
        "plain model": (world.model, 2, f"error: {world.model}: not an svdc compressed checkpoint"),
        "corrupt json": (corrupt, 2, f"error: {corrupt / 'config.json'} is not valid JSON"),
        "malformed": (malformed, 2, f"error: {malformed}/config.json: compression_config is malformed"),
    }


@pytest.mark.parametrize("case", ["file", "missing", "empty", "plain model", "corrupt json", "malformed"])
def test_inspect_handles_any_path(world, run, case):
    path, code, first = _inspect_cases(world)[case]
    r = run(["inspect", path])
    assert r.code == code and r.first_line.startswith(first), r.err


@pytest.mark.parametrize("report", [None, "{broken"])
def test_inspect_without_a_readable_report(world, run, report):
    folder = world.root / "noreport"
    shutil.copytree(world.prior, folder)
    if report is None:
        (folder / "report.json").unlink()
    else:
        (folder / "report.json").write_text(report)
    r = run(["inspect", folder])
    assert r.code == 0, r.err
    assert "report.json" in r.err.strip().splitlines()[-1]


# ---------------------------------------------------------------- leftovers, silent acceptance

def test_leftovers_of_a_killed_run_are_removed_by_the_next(world, run):
    out = world.root / "out"
    for name in (".out.tmp", ".out.tmp-4242", ".out.old-4242"):
        (world.root / name).mkdir()
        (world.root / name / "model.safetensors").write_bytes(b"x" * 1000)
    r = run(compress_args(world, "-o", out))
    assert r.code == 0, r.err
    assert sorted(p.name for p in world.root.glob(".out*")) == []


@pytest.mark.parametrize("method", ["rtn", "gptq", "gwq"])
@pytest.mark.parametrize("gs", ["0", "-5"])
def test_group_size_must_be_minus_one_or_positive(world, run, before_loading, method, gs):
    r = run(compress_args(world, "--group-size", gs, "-o", world.root / "out", method=method))
    assert r.code == 2
    assert r.first_line == (f"error: command line: stage 1 ({method}): 'group_size': group_size "
                            f"must be -1 (one group per row) or >= 1 (got {gs})")


def test_seqlen_beyond_the_context_is_refused(world, run, monkeypatch):
    import compressor.data as data
    monkeypatch.setattr(data, "calibration_windows", lambda *a, **k: pytest.fail("calibrated"))
    r = run(["compress", world.model, "--method", "rtn", "--seqlen", "100000", "-o", world.root / "out"])
    assert r.code == 2
    assert r.first_line == ("error: --seqlen 100000 is longer than the model's context (512 tokens): "
                            "use --seqlen <= 512")


def test_recipe_version_true_is_refused(world, run, before_loading):
    recipe = world.root / "r.yaml"
    recipe.write_text("version: true\nmodel: x\nstages: [{method: rtn}]\n")
    r = run(["run", recipe])
    assert r.code == 2
    assert r.first_line.startswith(f"error: {recipe}: 'version': Input should be a valid integer")


def test_method_name_case_gets_did_you_mean(world, run, before_loading):
    r = run(compress_args(world, "-o", world.root / "out", method="RTN"))
    assert r.code == 2
    assert r.first_line.startswith("error: unknown method 'RTN'. Did you mean 'rtn'?")


def test_rank_hint_holds_for_every_target_before_calibration(world, run, monkeypatch):
    import compressor.data as data
    monkeypatch.setattr(data, "calibration_windows", lambda *a, **k: pytest.fail("calibrated"))
    r = run(compress_args(world, "--rank", "10000", "-o", world.root / "out", method="svd"))
    assert r.code == 2
    # k_proj is 32x64: a rank-21 factorization (21*96 = 2016 < 2048) is the largest that saves
    assert r.first_line == ("error: rank 10000 is too large for stage 1 (svd): use a rank <= 21 "
                            "(the smallest target, model.layers.0.self_attn.k_proj 32x64)")


def test_missed_expectation_exits_3(world, run):
    recipe = world.root / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": str(world.model), "output": str(world.root / "out"),
        "calibration": {"nsamples": 2, "seqlen": 32}, "stages": [{"method": "rtn"}],
        "expect": {"bits_per_weight": {"value": 1.0, "tol": 0.01}}}))
    r = run(["run", recipe])
    assert r.code == 3
    assert any(ln.startswith("expect bits_per_weight = 1.0 ± 0.01: got") for ln in r.err.splitlines())
