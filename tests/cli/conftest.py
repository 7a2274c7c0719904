"""Fixtures of the CLI safety tests: a world of inputs to keep intact, an in-process CLI runner.

``World`` is a folder holding the model, a sibling file and an earlier svdc output; every
test snapshots their sha256 before and asserts them equal after, whatever the command did.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


def tree_sha(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@dataclass
class World:
    root: Path       # tmp folder; the tests run with cwd = root / "cwd"
    model: Path
    sibling: Path
    prior: Path      # an earlier svdc output

    def snapshot(self) -> dict[str, str]:
        return tree_sha(self.model, self.sibling, self.prior)


def make_world(tmp_path: Path, tiny_model_dir: Path, prior_output: Path) -> World:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    sibling = tmp_path / "notes.txt"
    sibling.write_text("not svdc's to touch\n")
    prior = tmp_path / "prior"
    shutil.copytree(prior_output, prior)
    (tmp_path / "cwd").mkdir()
    return World(tmp_path, model, sibling, prior)


@dataclass
class Result:
    code: int
    err: str

    @property
    def first_line(self) -> str:
        """svdc's first line, skipping transformers' tqdm bars and svdc's own progress bars
        (progress, not messages)."""
        return next((ln.strip() for ln in self.err.splitlines()
                     if ln.strip() and not _PROGRESS.search(ln)), "")


_PROGRESS = re.compile(r"\d+%\||it/s\]|━| elapsed \d+:")


def svdc(args: list[str], capsys, monkeypatch) -> Result:
    """Run the CLI in this process; restore the SIGTERM handler main() installs."""
    from compressor import cli
    monkeypatch.setattr(sys, "argv", ["svdc", *map(str, args)])
    old = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        signal.signal(signal.SIGTERM, old)
    captured = capsys.readouterr()
    return Result(e.value.code, captured.err + captured.out)


def no_loading(monkeypatch) -> None:
    """Make any model load fail loudly: for checks that must happen before loading."""
    def boom(*a, **k):
        raise AssertionError("the model was loaded before the check")
    import compressor.checkpoint.export as export
    import compressor.models as models
    monkeypatch.setattr(models, "load_model", boom)
    monkeypatch.setattr(export, "load_compressed", boom)


@pytest.fixture(scope="session")
def prior_output(tmp_path_factory, tiny_model_dir) -> Path:
    """An earlier svdc output (rtn on the tiny model), made once."""
    from compressor.api import compress
    from compressor.recipe import parse_recipe
    out = tmp_path_factory.mktemp("prior") / "out"
    recipe = parse_recipe({"model": str(tiny_model_dir), "output": str(out),
                           "stages": [{"method": "rtn", "bits": 4, "group_size": 32}],
                           "calibration": {"nsamples": 2, "seqlen": 32}})
    compress(recipe)
    return out


@pytest.fixture
def world(tmp_path, tiny_model_dir, prior_output, monkeypatch):
    """Inputs to keep intact; cwd is world.root / "cwd". Asserts they are intact afterwards."""
    w = make_world(tmp_path, tiny_model_dir, prior_output)
    monkeypatch.chdir(w.root / "cwd")
    before = w.snapshot()
    yield w
    assert w.snapshot() == before, "an input, a sibling file or an earlier output changed"


@pytest.fixture
def run(capsys, monkeypatch):
    """run([...]) -> Result: the CLI in this process."""
    return lambda args: svdc(args, capsys, monkeypatch)


@pytest.fixture
def before_loading(monkeypatch):
    """Any model load fails the test: the check under test must come first."""
    no_loading(monkeypatch)
