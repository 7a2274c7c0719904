"""Data-parallel compression on gloo (2 CPU ranks) matches a 1-process run; a dead rank ends
the run with one line and --resume finishes it.

Tolerance. Ranks sum their Gram / |x| / Fisher partial sums in float64 and store them in
float32, where a 1-process run adds window after window in float32: the statistics differ by a
few float32 ulps (relative ~1e-7). Everything downstream (factorizations, propagation) is then
the same code on the same inputs, and a sign convention makes SVD factors agree in value. So
low-rank and mixed weights (EoRA, LQ-LoRA, LOST, heal) must agree to 1e-4 relative (max abs
difference over max |W|; measured worst 2.9e-5, LQ-LoRA), CoSpaDi to 5e-4 (its dictionary
alternation carries the ulps further; measured 1.4e-4), and a quantized weight may differ only
where a rounding tie flipped: at most 0.5% of codes, each by one quantization step (measured:
none). Perplexity: within 0.1%. 2 ranks with --stream write the bytes 2 ranks in memory write.
"""

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
from compressor.cli.launch import strip_nproc
from compressor.core.distributed import Distributed, _pack, _unpack
from compressor.parts import CompressedLinear
from compressor.recipe import parse_recipe
from engine_matrix import MATRIX   # tests/ is on sys.path (conftest)

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable

METHODS = MATRIX   # every method and stage of the engine matrix (tests/engine_matrix.py)


def _data(model_dir: Path, out: Path, stages) -> dict:
    return {"model": str(model_dir), "stages": stages, "output": str(out),
            "calibration": {"dataset": "builtin", "nsamples": 4, "seqlen": 64, "seed": 0},
            "eval": {"datasets": ["builtin"], "seqlen": 64, "max_windows": 4}}


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SVDC_FAULT_KILL"):
        if k not in extra:
            env.pop(k, None)
    return env


def _free_port() -> int:
    from compressor.cli.launch import _free_port
    return _free_port()


def _run_ranks(recipes: list, world: int = 2, timeout: float = 900) -> list[subprocess.CompletedProcess]:
    port = str(_free_port())
    procs = [subprocess.Popen([PY, str(Path(__file__).with_name("_dist_worker.py")), json.dumps(recipes)],
                              env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world),
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, ""))
    return out


# ------------------------------------------------------------------------------ unit tests
def test_assign_largest_first_to_least_loaded():
    from torch import nn
    d = Distributed(rank=0, world=2)
    targets = {"q": nn.Linear(64, 64), "k": nn.Linear(64, 32), "v": nn.Linear(64, 32),
               "o": nn.Linear(64, 64), "up": nn.Linear(64, 96), "down": nn.Linear(96, 64)}
    owner = d.assign(targets)
    # up (6144) -> 0, down (6144) -> 1, q (4096) -> 0, o (4096) -> 1, k -> 0, v -> 1
    assert owner == {"up": 0, "down": 1, "q": 0, "o": 1, "k": 0, "v": 1}
    assert Distributed(rank=0, world=3).assign(targets) == {"up": 0, "down": 1, "q": 2, "o": 2,
                                                            "k": 0, "v": 1}


def test_pack_unpack_is_bit_exact_for_every_dtype():
    from torch import nn

    from compressor.core.pipeline import compress_linear
    from compressor.core.stages import Stage
    from compressor.core.types import LinearStats
    from compressor.recipe import parse_recipe
    torch.manual_seed(0)
    lin = nn.Linear(40, 24)
    x = torch.randn(200, 40)
    stats = LinearStats(ntokens=200, gram=x.T @ x)
    recipe = parse_recipe({"model": "x", "output": "y", "stages": [
        {"method": "gptq", "bits": 3, "group_size": 16}, {"method": "eora", "rank": 4}]})
    stages = [Stage.of(c) for c in recipe.stages]
    from compressor.core.context import PassContext
    ctx = PassContext(device=torch.device("cpu"), seed=0, storage_dtype=torch.bfloat16,
                      dist=Distributed())
    mod, rec = compress_linear("l.0.q", 0, "q", lin, stats, stages, ctx)
    layer = nn.Module()
    layer.q = mod
    meta, buf = _pack(layer, ["q"], {"q": rec.to_dict()}, torch.device("cpu"))
    [(rel, back)] = _unpack(meta, buf)
    assert rel == "q" and isinstance(back, CompressedLinear)
    a, b = mod.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and len({t.dtype for t in a.values()}) >= 3
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert torch.equal(mod.dense_weight(), back.dense_weight())


def test_strip_nproc():
    assert strip_nproc(["-v", "compress", "m", "--nproc", "2", "-o", "x"]) == ["-v", "compress", "m", "-o", "x"]
    assert strip_nproc(["compress", "--nproc=4", "m"]) == ["compress", "m"]


def test_shard_needs_a_window_per_rank():
    from compressor.errors import UserError
    w = torch.arange(10).reshape(5, 2)
    parts = [Distributed(rank=r, world=2).shard(w) for r in range(2)]
    assert torch.equal(torch.cat(parts), w) and parts[0].shape[0] == 3
    with pytest.raises(UserError, match="raise --nsamples"):
        Distributed(rank=0, world=8).shard(w)


# ------------------------------------------------------------------------------ 2 gloo ranks
@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """Each method compressed by 1 process (here, in memory) and by 2 gloo ranks
    (subprocesses), in memory and with --stream."""
    root = tmp_path_factory.mktemp("dist")
    one = {m: compress(parse_recipe(_data(tiny_model_dir, root / f"{m}-1", st))).output
           for m, st in METHODS.items()}
    recipes = [_data(tiny_model_dir, root / f"{m}-2", st) for m, st in METHODS.items()]
    recipes += [{"recipe": _data(tiny_model_dir, root / f"{m}-2s", st), "stream": True}
                for m, st in METHODS.items()]
    res = _run_ranks(recipes)
    for r, p in enumerate(res):
        assert p.returncode == 0, f"rank {r}:\n{p.stdout[-3000:]}"
    return {m: (one[m], root / f"{m}-2", root / f"{m}-2s") for m in METHODS}


# methods whose codes come from rounding: a rank's float32-ulp Gram difference may flip a tie
QUANTIZERS = {"rtn", "gptq", "gptq-true-sequential", "gwq", "plan"}
# CoSpaDi's dictionary alternation carries the ulps further (measured 1.4e-4 worst)
REL_TOL = {"cospadi": 5e-4}


def _compare(a_dir: Path, b_dir: Path, method: str) -> dict:
    """Every compressed linear of ``b_dir`` is ``a_dir``'s (same spec; dense weights within the
    stated tolerance), every other tensor bit-identical."""
    a, b = compressor.load(a_dir), compressor.load(b_dir)
    mods_b = dict(b.named_modules())
    n_compressed = flipped = total = 0
    worst = 0.0
    bits = next((st["bits"] for st in METHODS[method] if "bits" in st), 4)
    if method == "plan":   # the coarsest grid on its menu bounds a flipped code's step
        entries = [e if isinstance(e, list) else [e] for e in METHODS[method][0]["menu"]]
        bits = min(st["bits"] for e in entries for st in e if "bits" in st)
    for name, ma in a.named_modules():
        mb = mods_b[name]
        if not isinstance(ma, CompressedLinear):
            continue
        n_compressed += 1
        assert isinstance(mb, CompressedLinear) and ma.spec() == mb.spec(), name
        wa, wb = ma.dense_weight(), mb.dense_weight()
        step = (wa - wb).abs()
        if method in QUANTIZERS:
            flipped += int((step > 1e-6 * wa.abs().max()).sum())
            total += wa.numel()
            # a flipped code moves by one step: at most the group range / (2^bits - 1)
            assert float(step.max()) <= float(wa.abs().max()) * 2 / (2 ** bits - 1) + 1e-6, name
        else:
            rel = float(step.max() / wa.abs().max())
            worst = max(worst, rel)
            assert rel < REL_TOL.get(method, 1e-4), f"{name}: {rel:.2e}"
    assert n_compressed == 14
    sa, sb = a.state_dict(), b.state_dict()
    for k, v in sa.items():
        if ".parts." not in k:
            assert torch.equal(v, sb[k]), k
    if method in QUANTIZERS:
        assert flipped <= 0.005 * total, f"{flipped}/{total} quantized weights differ"
    return {"worst_rel": worst, "flipped": flipped}


def _sha(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob("*.safetensors"))}


@pytest.mark.parametrize("method", list(METHODS))
def test_two_ranks_match_one_process(runs, method):
    """The engine matrix x {1 process, 2 gloo ranks} x {in memory, --stream}: 2 ranks give
    the 1-process tensors within the tolerance above, and 2 ranks streamed write the bytes of
    2 ranks in memory."""
    one, two, two_streamed = runs[method]
    _compare(one, two, method)
    assert _sha(two) == _sha(two_streamed)
    ra = json.loads((one / "report.json").read_text())
    rb = json.loads((two / "report.json").read_text())
    rs = json.loads((two_streamed / "report.json").read_text())
    assert rb["distributed"] == {"world_size": 2, "backend": "gloo", "timeout_s": 1800.0}
    assert rs["distributed"] == rb["distributed"] and rs["streamed"] is True
    assert ra["distributed"] is None
    assert [m["name"] for m in ra["modules"]] == [m["name"] for m in rb["modules"]]
    assert [m["params_after"] for m in ra["modules"]] == [m["params_after"] for m in rb["modules"]]
    assert ra["totals"] == rb["totals"] == rs["totals"]
    pa, pb, ps = ra["eval"][0]["ppl"], rb["eval"][0]["ppl"], rs["eval"][0]["ppl"]
    assert abs(pa - pb) / pa < 1e-3, (pa, pb)
    assert abs(pb - ps) <= 1e-5 * pb, (pb, ps)   # a streamed output is scored layer-major
    if method == "fwsvd":
        for r in (rb, rs):
            assert r["gradients"]["nsamples"] == 4 and r["gradients"]["nsamples_per_rank"] == 2
    for folder in (two, two_streamed):
        assert not list(folder.parent.glob(f".{folder.name}.resume")), "resume folder left behind"
        assert (folder / "report.md").is_file()


def test_ranks_disagreeing_on_the_recipe_stop_in_one_line(tiny_model_dir, tmp_path):
    a = _data(tiny_model_dir, tmp_path / "x", [{"method": "whitened-svd", "ratio": 0.3}])
    b = _data(tiny_model_dir, tmp_path / "x", [{"method": "whitened-svd", "ratio": 0.4}])
    res = _run_ranks([[a, b]], timeout=300)
    for r, p in enumerate(res):
        assert p.returncode == 2, p.stdout[-2000:]
        line = [ln for ln in p.stdout.splitlines() if ln.startswith(f"rank {r}:")]
        assert line and "ranks disagree on the recipe" in line[0], p.stdout[-2000:]
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------ CLI, kill, resume
def _cli(args: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "compressor", *args], env=_env(**env), capture_output=True,
                          text=True, timeout=900, cwd=str(ROOT))


def test_killed_rank_is_one_line_and_resume_finishes(tiny_model_dir, tmp_path, runs):
    out = tmp_path / "wsvd"
    args = ["compress", str(tiny_model_dir), "--method", "whitened-svd", "--ratio", "0.3",
            "--calib", "builtin", "--nsamples", "4", "--seqlen", "64", "--seed", "0",
            "--eval", "builtin", "--eval-windows", "4", "-o", str(out), "--nproc", "2"]
    # rank 1 SIGKILLs itself on reaching layer 1, after layer 0 is checkpointed
    bad = _cli(args, SVDC_FAULT_KILL="1:1", COLUMNS="400")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    errors = [ln for ln in (bad.stdout + bad.stderr).splitlines() if "error" in ln.lower()]
    assert len(errors) == 1, bad.stdout + bad.stderr
    assert "rank 1 of 2 died (killed by SIGKILL)" in errors[0] and "--resume" in errors[0]
    assert not out.exists()
    resume_dir = tmp_path / ".wsvd.resume"
    assert (resume_dir / "layer_0000.json").is_file()
    assert not (resume_dir / "layer_0001.json").exists()

    ok = _cli(args + ["--resume"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["resumed_layers"] == 1 and rep["distributed"]["world_size"] == 2
    assert not resume_dir.exists()
    # the finished output is the 1-process run's
    one, _, _ = runs["whitened-svd"]
    _compare(one, out, "whitened-svd")
    ra = json.loads((one / "report.json").read_text())
    assert abs(ra["eval"][0]["ppl"] - rep["eval"][0]["ppl"]) / ra["eval"][0]["ppl"] < 1e-3


@pytest.mark.parametrize("device,backend", [("cuda", "nccl"), ("cpu", "gloo")])
def test_backend_follows_the_device(monkeypatch, device, backend):
    """NCCL for CUDA (each rank on cuda:LOCAL_RANK), gloo on CPUs: the choice alone, with the
    process-group calls stubbed (this machine has no GPU; NCCL itself needs one)."""
    import torch.distributed as tdist

    from compressor.core import distributed as d
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "init_process_group", lambda b, **kw: seen.setdefault("backend", b))
    monkeypatch.setattr(tdist, "get_rank", lambda: 0)
    monkeypatch.setattr(tdist, "get_world_size", lambda: 2)
    monkeypatch.setattr(tdist, "get_backend", lambda: seen["backend"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: seen.setdefault("set", dev))
    monkeypatch.setattr(d.Distributed, "agree", lambda self, *a: None)
    monkeypatch.setattr(d, "_quiet", lambda: None)
    got = d.Distributed.start(torch.device(device), "recipe")
    assert seen["backend"] == backend and got.backend == backend
    if device == "cuda":
        assert got.device == torch.device("cuda", 1) and seen["set"] == torch.device("cuda", 1)
        assert got.comm_device == torch.device("cuda", 1)
    else:
        assert got.comm_device == torch.device("cpu")


def test_stream_with_two_ranks_writes_what_one_process_writes(tiny_model_dir, tmp_path, runs):
    """--stream --nproc 2: the ranks divide the work as in memory, rank 0 writes, and the
    launcher's last line and exit code match what is on disk."""
    out = tmp_path / "fw"
    args = ["compress", str(tiny_model_dir), "--method", "fwsvd", "--ratio", "0.3",
            "--calib", "builtin", "--nsamples", "4", "--seqlen", "64", "--seed", "0",
            "--eval", "builtin", "--eval-windows", "4", "-o", str(out), "--nproc", "2",
            "--stream"]
    res = _cli(args, COLUMNS="400")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert lines[-1] == f"wrote {out}/ (report.md, report.json, recipe.yaml)", lines[-3:]
    for f in ("report.md", "report.json", "recipe.yaml", "config.json"):
        assert (out / f).is_file(), f
    rep = json.loads((out / "report.json").read_text())
    assert rep["streamed"] is True and rep["distributed"]["world_size"] == 2
    assert rep["gradients"]["streamed"] is True and rep["gradients"]["nsamples_per_rank"] == 2
    one, _, _ = runs["fwsvd"]
    _compare(one, out, "fwsvd")
    assert not (tmp_path / ".fw.resume").exists() and not (tmp_path / ".fw.lock").exists()
