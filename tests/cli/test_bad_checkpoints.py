"""Issue 25: a checkpoint, and the folder beside the output, are data from a stranger.

The names svdc makes beside an output OUT (``.OUT.lock``, ``.OUT.tmp``, ``.OUT.old``,
``.OUT.resume``) are refused when something planted sits there (a link, an input of the run),
``-o`` is refused when it is a link, a failed run strands no resume folder, and SIGTERM prints
one line in every command. Each case asserts the exit code, the first line, and that every
name and every byte under the test folder (the model, a sibling file, an earlier output, what
was planted) is what it was before: nothing written through a link, nothing left behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
from pathlib import Path

import pytest
import yaml

FAST = ["--nsamples", "2", "--seqlen", "32"]
RTN = ["--method", "rtn", "--bits", "4", "--group-size", "32"]
OWN = ("lock", "tmp", "old", "resume")


def state(root: Path) -> dict[str, str]:
    """Every name under ``root`` (links listed, not followed) with each file's sha256."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(folder, name)
            if os.path.islink(p):
                out[p] = "link to " + os.readlink(p)
            elif os.path.isdir(p):
                out[p] = "folder"
            else:
                out[p] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def own(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.{kind}"


def leftovers(out: Path, before: dict[str, str]) -> list[str]:
    """svdc's names beside ``out`` (and ``out`` itself) that were not there before."""
    names = [out, *(own(out, k) for k in OWN)]
    return [str(p) for p in names if os.path.lexists(p) and str(p) not in before]


def unchanged_after(world, run, args, first: str, code: int = 2) -> None:
    """Run; assert the code, the first line, no leftovers and every byte unchanged."""
    out = world.root / "out"
    before = state(world.root)
    r = run(args)
    assert r.code == code, r.err
    assert r.first_line.startswith(first), r.first_line
    assert "Traceback" not in r.err
    assert leftovers(out, before) == []
    assert state(world.root) == before


def compress(world, *extra):
    return ["compress", world.model, *RTN, *FAST, "-o", world.root / "out", *extra]


def victim(world) -> Path:
    """A folder that is nobody's business of svdc's, to plant links to."""
    v = world.root / "victim"
    v.mkdir(exist_ok=True)
    (v / "precious.txt").write_text("keep me\n")
    return v


# ---------------------------------------------------------------- links at svdc's own names

@pytest.mark.parametrize("kind", OWN)
def test_a_link_at_an_own_name_is_refused(world, run, before_loading, kind):
    out = world.root / "out"
    link = own(out, kind)
    link.symlink_to(world.sibling if kind == "lock" else victim(world))
    target = os.readlink(link)
    unchanged_after(
        world, run, compress(world),
        f"error: {link} is a symbolic link (to {target}); svdc creates this name itself "
        f"beside output {out} and never writes or deletes through a link: remove the link "
        f"or choose another -o")


def test_a_dangling_link_at_the_lock_is_refused(world, run, before_loading):
    out = world.root / "out"
    lock = own(out, "lock")
    lock.symlink_to(world.root / "created-through-the-link")
    unchanged_after(world, run, compress(world), f"error: {lock} is a symbolic link")
    assert not (world.root / "created-through-the-link").exists()


def test_a_link_at_an_old_versions_leftover_name_is_refused(world, run, before_loading):
    link = world.root / ".out.tmp-4242"
    link.symlink_to(victim(world))
    unchanged_after(world, run, compress(world), f"error: {link} is a symbolic link")


def test_a_link_at_the_resume_folder_is_refused_with_resume(world, run, before_loading):
    link = own(world.root / "out", "resume")
    link.symlink_to(victim(world))
    unchanged_after(world, run, compress(world, "--resume"), f"error: {link} is a symbolic link")


def test_a_hard_link_at_the_lock_is_never_written(world, run, before_loading):
    lock = own(world.root / "out", "lock")
    os.link(world.sibling, lock)
    unchanged_after(
        world, run, compress(world),
        f"error: {lock} is not a lock file svdc made (it has 2 names, a hard link to "
        f"another file); svdc never writes into it")


def test_a_file_at_the_tmp_name_is_refused_not_deleted(world, run, before_loading):
    tmp = own(world.root / "out", "tmp")
    tmp.write_text("someone's notes\n")
    unchanged_after(
        world, run, compress(world),
        f"error: {tmp} exists and is not a folder svdc made for output {world.root / 'out'}")


# ---------------------------------------------------------------- inputs at svdc's own names

@pytest.mark.parametrize("kind, role", [("resume", "resume folder"), ("tmp", "temporary folder"),
                                        ("old", "folder for the output it replaces")])
def test_a_model_folder_at_an_own_name_is_refused(world, run, before_loading, kind, role):
    out = world.root / "out"
    model = own(out, kind)
    shutil.copytree(world.model, model)
    unchanged_after(
        world, run, ["compress", model, *RTN, *FAST, "-o", out],
        f"error: input {model} is svdc's own {role} for output {out}, which a run creates "
        f"and deletes: move the input elsewhere or choose another -o")


def test_a_model_folder_inside_an_own_folder_is_refused(world, run, before_loading):
    out = world.root / "out"
    model = own(out, "tmp") / "model"
    shutil.copytree(world.model, model)
    unchanged_after(
        world, run, ["compress", model, *RTN, *FAST, "-o", out],
        f"error: input {model} lies inside {own(out, 'tmp')}, svdc's own temporary folder "
        f"for output {out}, which a run creates and deletes")


def test_a_calibration_file_named_like_the_lock_is_refused(world, run, before_loading):
    out = world.root / "out"
    calib = own(out, "lock")
    calib.write_text("calibration text that must survive " * 40)
    unchanged_after(
        world, run, ["compress", world.model, "--method", "gptq", *FAST, "--calib", calib,
                     "-o", out],
        f"error: input {calib} is svdc's own lock file for output {out}, which a run "
        f"creates and deletes")


def test_a_recipe_inside_an_own_folder_is_refused(world, run, before_loading):
    out = world.root / "out"
    recipe = own(out, "old") / "r.yaml"
    recipe.parent.mkdir()
    recipe.write_text(yaml.safe_dump({"model": str(world.model), "output": str(out),
                                      "stages": [{"method": "rtn", "bits": 4, "group_size": 32}]}))
    unchanged_after(
        world, run, ["run", recipe],
        f"error: input {recipe} lies inside {own(out, 'old')}, svdc's own folder for the "
        f"output it replaces")


def test_a_fisher_file_to_be_written_inside_the_resume_folder_is_refused(world, run,
                                                                         before_loading):
    out = world.root / "out"
    (own(out, "resume")).mkdir()
    fisher = own(out, "resume") / "fisher.safetensors"
    unchanged_after(
        world, run, compress(world, "--fisher-file", fisher),
        f"error: input {fisher} lies inside {own(out, 'resume')}, svdc's own resume folder")


def test_an_export_source_at_an_own_name_is_refused(world, run, before_loading):
    dense = world.root / "out"
    src = own(dense, "tmp")
    shutil.copytree(world.prior, src)
    unchanged_after(
        world, run, ["export", src, "--format", "dense", "-o", dense],
        f"error: input {src} is svdc's own temporary folder for output {dense}")


# ---------------------------------------------------------------- -o that is a link

def test_output_that_is_a_dangling_link_is_refused_before_any_work(world, run, before_loading):
    link = world.root / "out"
    link.symlink_to(world.root / "gone")
    unchanged_after(
        world, run, compress(world),
        f"error: output {link} is a symbolic link to {world.root / 'gone'}, which does not "
        f"exist; svdc writes its output as a new folder, never through a link: remove the "
        f"link or choose another -o")


def test_output_that_links_to_an_earlier_output_is_refused(world, run, before_loading):
    link = world.root / "out"
    link.symlink_to(world.prior)
    unchanged_after(
        world, run, compress(world, "--force"),
        f"error: output {link} is a symbolic link to {world.prior}; svdc never replaces or "
        f"writes through a link: pass the folder itself, -o {world.prior.resolve()}, or "
        f"choose another -o")


# ---------------------------------------------------------------- cleanup after a failure

def _fail_in_save_layer(monkeypatch, make, after: int = 0):
    """Layers before ``after`` are checkpointed as usual; the next one raises ``make(file)``."""
    from compressor.core.resume import LayerCheckpoints
    real = LayerCheckpoints.save_layer

    def save(self, i, *a, **k):
        if i >= after:
            raise make(self.layer_file(i))
        real(self, i, *a, **k)
    monkeypatch.setattr(LayerCheckpoints, "save_layer", save)


def _disk_full(path):
    return OSError(errno.ENOSPC, "No space left on device", str(path))


@pytest.mark.parametrize("failure, code, first", [
    (_disk_full, 2, "error: no space left on the device writing {file}: free some space or "
                    "choose another -o"),
    (lambda _: RuntimeError("boom"), 1, "internal error: RuntimeError: boom (rerun with --debug "
                                        "for the traceback)"),
    (lambda _: KeyboardInterrupt(), 130, "interrupted: no output folder was written"),
], ids=["disk-full", "crash", "ctrl-c"])
def test_a_failure_before_a_layer_finished_leaves_no_resume_folder(world, run, monkeypatch,
                                                                   failure, code, first):
    out = world.root / "out"
    _fail_in_save_layer(monkeypatch, failure)
    file = own(out, "resume") / "layer_0000.safetensors"
    before = state(world.root)
    r = run(compress(world))
    assert r.code == code, r.err
    assert r.first_line == first.format(file=file)
    assert leftovers(out, before) == [] and state(world.root) == before


def test_a_failure_after_a_layer_finished_keeps_it_for_resume(world, run, monkeypatch):
    out = world.root / "out"
    before = state(world.root)
    with monkeypatch.context() as m:
        _fail_in_save_layer(m, _disk_full, after=1)
        r = run(compress(world))
    assert r.code == 2, r.err
    assert r.first_line == (f"error: no space left on the device writing "
                            f"{own(out, 'resume') / 'layer_0001.safetensors'}: free some space or "
                            f"choose another -o; 1 finished layer is checkpointed, rerun the same "
                            f"command with --resume to continue")
    assert leftovers(out, before) == [str(own(out, "resume"))]
    resume_dir = str(own(out, "resume"))
    assert {k: v for k, v in state(world.root).items() if not k.startswith(resume_dir)} == before
    r = run(compress(world, "--resume"))
    assert r.code == 0, r.err
    assert leftovers(out, before) == [str(out)]


# ---------------------------------------------------------------- SIGTERM in every command

def _sigterm(*a, **k):
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):   # the handler runs between bytecodes: give it some
        pass
    raise AssertionError("SIGTERM was not delivered")


@pytest.mark.parametrize("command", ["compress", "run", "eval", "export", "inspect"])
def test_sigterm_prints_one_line_and_exits_143(world, run, monkeypatch, command):
    import compressor.checkpoint as checkpoint
    import compressor.checkpoint.verify as verify
    import compressor.data as data
    import compressor.evaluate as evaluate
    out = world.root / "out"
    if command == "compress":
        monkeypatch.setattr(data, "calibration_windows", _sigterm)
        args = ["compress", world.model, "--method", "gptq", *FAST, "-o", out]
    elif command == "run":
        monkeypatch.setattr(data, "calibration_windows", _sigterm)
        args = ["run", _recipe(world, stages=[{"method": "gptq", "bits": 4, "group_size": 32}])]
    elif command == "eval":
        monkeypatch.setattr(evaluate, "evaluate", _sigterm)
        args = ["eval", world.prior, "--seqlen", "32", "--max-windows", "1"]
    elif command == "export":
        monkeypatch.setattr(checkpoint, "export_dense", _sigterm)
        args = ["export", world.prior, "--format", "dense", "-o", out]
    else:
        monkeypatch.setattr(verify, "read_config", _sigterm)
        args = ["inspect", world.prior]
    unchanged_after(
        world, run, args, "terminated (SIGTERM): no output folder was written", code=143)


# ---------------------------------------------------------------- checked before loading

def _recipe(world, **extra) -> Path:
    path = world.root / "r.yaml"
    path.write_text(yaml.safe_dump({"model": str(world.model), "output": str(world.root / "out"),
                                    "stages": [{"method": "rtn", "bits": 4, "group_size": 32}],
                                    "calibration": {"nsamples": 2, "seqlen": 32}, **extra}))
    return path


def test_an_unknown_eval_task_is_refused_before_loading(world, run, before_loading):
    pytest.importorskip("lm_eval")
    unchanged_after(world, run, compress(world, "--eval-tasks", "arc_easy,arc_easi"),
                    "error: unknown lm-eval task 'arc_easi' (did you mean arc_easy")


def test_svdc_eval_refuses_an_unknown_task_before_loading(world, run, before_loading):
    pytest.importorskip("lm_eval")
    unchanged_after(world, run, ["eval", str(world.model), "--tasks", "arc_easi"],
                    "error: unknown lm-eval task 'arc_easi' (did you mean arc_easy")


def test_a_recipes_unknown_eval_task_is_refused_before_loading(world, run, before_loading):
    pytest.importorskip("lm_eval")
    recipe = _recipe(world, eval={"datasets": ["builtin"], "tasks": ["hellaswg"]})
    unchanged_after(world, run, ["run", recipe],
                    "error: unknown lm-eval task 'hellaswg' (did you mean hellaswag")


@pytest.mark.parametrize("expect, eval_, first", [
    ("bits_per_weigth", None, "'bits_per_weigth' is not a metric this run reports (did you "
                              "mean 'bits_per_weight'?); it reports bits_per_weight, params_kept"),
    ("ppl.wikitext2", {"datasets": ["builtin"]},
     "'ppl.wikitext2' is not a metric this run reports: 'wikitext2' is not among "
     "eval.datasets; it reports bits_per_weight, params_kept, bytes, target_bytes, ppl.builtin"),
    ("ppl.builtin", None, "'ppl.builtin' is not a metric this run reports: perplexity is "
                          "scored only with an eval block; add eval: {datasets: [builtin]}"),
    ("mean_output_rel_err", None, "'mean_output_rel_err' is not a metric this run reports: "
                                  "this run is data-free"),
    ("task.arc_easy.acc_nrom", {"datasets": ["builtin"], "tasks": ["arc_easy"]},
     "'task.arc_easy.acc_nrom' is not a metric this run reports (did you mean "
     "'task.arc_easy.acc_norm'?)"),
], ids=["typo", "ppl-other-dataset", "ppl-no-eval", "output-err-data-free", "task-metric"])
def test_an_expect_metric_the_run_will_not_report_is_refused_before_loading(
        world, run, before_loading, expect, eval_, first):
    if expect.startswith("task."):
        pytest.importorskip("lm_eval")
    recipe = _recipe(world, expect={expect: {"value": 1.0, "tol": 0.1}},
                     **({"eval": eval_} if eval_ else {}))
    unchanged_after(world, run, ["run", recipe], f"error: expect: {first}")


def test_every_metric_a_run_reports_passes_the_early_check(tiny_model_dir, tmp_path):
    """The names check_expect_names accepts are those metrics_of makes from a report."""
    pytest.importorskip("lm_eval")
    from compressor.errors import UserError
    from compressor.recipe import parse_recipe
    from compressor.run_eval import check_expect_names, metrics_of
    from compressor.tasks import check_tasks
    text = tmp_path / "My Notes.txt"
    report = {"totals": {"targets": {"bits_per_weight": 4.5, "params_kept": 1.0,
                                     "bytes_after": 10}, "model": {"bytes_after": 20}},
              "eval": [{"dataset": "builtin", "ppl": 9.0}, {"dataset": text.name, "ppl": 8.0}],
              "tasks": {"tasks": [{"task": "arc_easy", "metrics": {"acc": 0.5, "acc_norm": 0.6}},
                                  {"task": "gsm8k", "metrics": {"exact_match,strict-match": 0.1}},
                                  {"task": "mmlu_anatomy", "metrics": {"acc": 0.3}}]},
              "modules": [{"output_rel_err": 0.1}]}
    names = sorted(metrics_of(report))
    assert len(names) == 11
    recipe = parse_recipe({"model": str(tiny_model_dir), "stages": [{"method": "gptq"}],
                           "eval": {"datasets": ["Builtin", str(text)],
                                    "tasks": ["arc_easy", "gsm8k", "mmlu"]},
                           "expect": {n: {"value": 0, "tol": 1} for n in names}})
    check_expect_names(recipe, check_tasks(["arc_easy", "gsm8k", "mmlu"]), output_errors=True)
    with pytest.raises(UserError, match="this run is data-free"):
        check_expect_names(recipe, check_tasks(["arc_easy", "gsm8k", "mmlu"]),
                           output_errors=False)


@pytest.mark.parametrize("command", ["compress", "run"])
def test_a_negative_nproc_is_refused_before_loading(world, run, before_loading, command):
    args = compress(world) if command == "compress" else ["run", _recipe(world)]
    unchanged_after(world, run, [*args, "--nproc", "-1"],
                    "error: --nproc -1: the number of ranks must be at least 1")


# ---------------------------------------------------------------- malformed GGUF input

@pytest.mark.parametrize("mangle", ["huge-counts", "garbage"])
def test_a_malformed_gguf_is_one_line_through_the_cli(world, run, mangle):
    """Was a struct error (internal error, exit 1) and "not a valid JSON file"."""
    import struct
    gguf_file = world.root / "m.gguf"
    header = b"GGUF" + struct.pack("<I", 3)
    gguf_file.write_bytes(header + (struct.pack("<QQ", 2 ** 40, 2 ** 40) + b"\0" * 64
                                    if mangle == "huge-counts"
                                    else struct.pack("<QQ", 1, 1) + bytes(range(256)) * 4))
    first = ("its header claims 1099511627776 tensors" if mangle == "huge-counts"
             else "metadata key 0 at byte 32 needs 506097522914230528 bytes, past the end")
    for args in (compress(world)[:1] + [gguf_file] + compress(world)[2:],
                 ["eval", gguf_file, "--seqlen", "16", "--max-windows", "1"]):
        unchanged_after(world, run, args, f"error: '{gguf_file}' is corrupt: {first}")


# ---------------------------------------------------------------- broken checkpoints, absurd configs

def _broken(world, case: str) -> Path:
    """A copy of the model beside the others, broken one way (issue 25, items 3 and 5)."""
    import json
    import struct

    import torch
    from safetensors.torch import load_file, save_file
    folder = world.root / f"broken-{case}"
    shutil.copytree(world.model, folder)
    st_path, cfg_path = folder / "model.safetensors", folder / "config.json"
    key = "model.layers.1.mlp.down_proj.weight"
    if case in ("missing", "inf", "nan", "wrong-shape"):
        st = load_file(st_path)
        if case == "missing":
            st.pop(key)
        elif case == "wrong-shape":
            st[key] = torch.zeros(st[key].shape[0], st[key].shape[1] + 1)
        else:
            st[key][0, 0] = float(case)
        save_file(st, str(st_path), metadata={"format": "pt"})
    elif case == "bin-and-empty-safetensors":
        torch.save(load_file(st_path), folder / "pytorch_model.bin")
        st_path.write_bytes(b"")
    elif case == "header-is-a-list":
        data = st_path.read_bytes()
        n = struct.unpack("<Q", data[:8])[0]
        st_path.write_bytes(struct.pack("<Q", 8) + b"[1,2,3] " + data[8 + n:])
    else:
        field, value = {"hidden-1e9": ("hidden_size", 10 ** 9),
                        "vocab-negative": ("vocab_size", -5),
                        "heads-0": ("num_attention_heads", 0),
                        "layers-1e6": ("num_hidden_layers", 10 ** 6)}[case]
        cfg = json.loads(cfg_path.read_text())
        cfg[field] = value
        cfg_path.write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("case, first", [
    ("missing", "lacks 1 tensor(s) the architecture expects (model.layers.1.mlp.down_proj"),
    ("inf", "NaN or Inf"),
    ("nan", "NaN or Inf"),
    ("wrong-shape", "model.layers.1.mlp.down_proj.weight"),
    ("bin-and-empty-safetensors", "model.safetensors"),
    ("header-is-a-list", "is corrupt"),
    ("hidden-1e9", "B parameters (hidden_size 1000000000"),
    ("vocab-negative", "vocab_size"),
    ("heads-0", "num_attention_heads"),
    ("layers-1e6", "num_hidden_layers"),
])
@pytest.mark.parametrize("command", ["compress", "eval"])
def test_a_broken_checkpoint_is_one_line_in_every_command(world, run, case, first, command):
    """Was exit 0 with random fills, an internal error, or no answer: now exit 2 naming the
    file or key, nothing written, every byte (the broken model's too) as it was."""
    model = _broken(world, case)
    args = (compress(world)[:1] + [model] + compress(world)[2:] if command == "compress"
            else ["eval", model, "--seqlen", "16", "--max-windows", "1"])
    before = state(world.root)
    r = run(args)
    assert r.code == 2, r.err
    line = r.first_line
    assert line.startswith("error: ") and first in line, line
    assert "Traceback" not in r.err
    assert leftovers(world.root / "out", before) == []
    assert state(world.root) == before
