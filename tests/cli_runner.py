"""``run_cli``: the svdc command line run in-process, as the tests drive it (one copy for
every test module)."""

from __future__ import annotations

import sys

import pytest

from compressor import cli


def run_cli(args, capsys, monkeypatch):
    """(exit code, stdout, stderr) of ``svdc ARGS``."""
    monkeypatch.setattr(sys, "argv", ["svdc", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out = capsys.readouterr()
    return e.value.code, out.out, out.err
