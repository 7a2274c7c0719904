"""Two processes on one output, and SIGTERM, with real `python -m compressor` processes.

The first run is frozen (SIGSTOP) while it holds the output's lock, so the second run is
sure to meet the lock however slow the machine: it must fail at once with the holder's PID,
and the first run, continued, must write exactly what a run alone writes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compressor.safety.lock import lock_path_for

REPO = Path(__file__).resolve().parents[2]
FAST = ["--nsamples", "2", "--seqlen", "32"]


def _start(args, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "compressor", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lock(out: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    lock = lock_path_for(out)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if json.loads(lock.read_text()).get("pid") == proc.pid:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the first run never took the lock")


def _first_line(err: str) -> str:
    return next((ln.strip() for ln in err.splitlines()
                 if ln.startswith(("error", "terminated", "interrupted"))), "")


@pytest.fixture(scope="module")
def solo(tiny_model_dir, tmp_path_factory):
    """What `--method svd --ratio 0.2` writes when it runs alone (in this process)."""
    from compressor.api import compress
    from compressor.recipe import parse_recipe
    out = tmp_path_factory.mktemp("solo") / "out"
    compress(parse_recipe({"model": str(tiny_model_dir), "output": str(out),
                           "stages": [{"method": "svd", "ratio": 0.2}],
                           "calibration": {"nsamples": 2, "seqlen": 32}}))
    return out


@pytest.mark.parametrize("second_ratio", ["0.2", "0.3"], ids=["same-run", "other-ratio"])
def test_second_run_on_the_same_output_fails_fast(tiny_model_dir, tmp_path, solo, second_ratio):
    out = tmp_path / "out"
    first = _start(["compress", tiny_model_dir, "--method", "svd", "--ratio", "0.2", *FAST, "-o", out],
                   tmp_path)
    _wait_for_lock(out, first)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        second = _start(["compress", tiny_model_dir, "--method", "svd", "--ratio", second_ratio, *FAST,
                         "-o", out, "--resume"], tmp_path)
        _, err = second.communicate(timeout=300)
        took = time.monotonic() - t0
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2, err
    assert _first_line(err).startswith(f"error: output {out} is in use by another svdc run "
                                       f"(PID {first.pid} on ")
    assert took < 120
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    for name in ("model.safetensors", "config.json", "recipe.yaml"):
        assert (out / name).read_bytes() == (solo / name).read_bytes().replace(
            str(solo).encode(), str(out).encode()), name
    assert not lock_path_for(out).exists()
    assert sorted(p.name for p in tmp_path.glob(".out*")) == []


def test_sigterm_is_like_ctrl_c_with_exit_143(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    proc = _start(["compress", tiny_model_dir, "--method", "svd", *FAST, "-o", out], tmp_path)
    _wait_for_lock(out, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert _first_line(err).startswith("terminated (SIGTERM): no output folder was written")
    assert "Traceback" not in err
    assert not out.exists() and not lock_path_for(out).exists()
    assert [p.name for p in tmp_path.glob(".out*") if p.name != ".out.resume"] == []
