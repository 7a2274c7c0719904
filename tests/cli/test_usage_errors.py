"""Usage errors (issue 25): for every command registered on the app, an unknown option or a
malformed value is one line naming the problem and the --help to read, exit 2, no traceback.

The commands are read from the app object, so a new command is covered without a new test.
"""

from __future__ import annotations

import pytest
import typer.main

from compressor.cli import app

COMMANDS = typer.main.get_command(app).commands


def _is_numeric(p) -> bool:
    """An int/float option, for typer's vendored click (type_descriptor) and standalone click."""
    ann = getattr(getattr(p, "type_descriptor", None), "annotation", None)
    name = getattr(getattr(p, "type", None), "name", "")
    return ann in (int, float) or name in ("integer", "float")


def _malformed(name: str, cmd) -> list[list[str]]:
    """Command lines that must fail while parsing: the command's arguments filled with
    placeholders, then one bad option or value."""
    base = [name] + ["x"] * sum(p.param_type_name == "argument" for p in cmd.params)
    options = [p for p in cmd.params if p.param_type_name == "option"]
    cases = [base + ["--no-such-option"], base + ["--help=yes"], base + ["extra1", "extra2"]]
    takes_value = [p for p in options if not getattr(p, "is_flag", False)]
    if takes_value:
        cases.append(base + [takes_value[0].opts[0]])             # value missing
    cases += [base + [p.opts[0], "abc"] for p in options if _is_numeric(p)][:1]
    return cases


def assert_usage_error(res, *needles):
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert res.code == 2, res.err
    assert len(lines) == 1, res.err
    assert "Traceback" not in res.err and "internal error" not in res.err, res.err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


def test_every_command_is_covered():
    assert {"compress", "run", "eval", "export", "inspect", "methods"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_usage_errors_of_every_command(name, run, before_loading):
    for args in _malformed(name, COMMANDS[name]):
        assert_usage_error(run(args), "error:", f"`svdc {name} --help`")


@pytest.mark.parametrize("args,needles", [
    (["compress", "tiny", "--ration", "0.2"], ["No such option: --ration", "--ratio"]),
    (["compress", "m", "--rank", "abc"], ["'--rank'", "integer"]),
    (["compress", "m", "--eig-floor", "1e-5"], ["No such option: --eig-floor"]),
    (["compress"], ["Missing argument", "`svdc compress --help`"]),
    (["compres", "m"], ["No such command 'compres'", "compress", "`svdc --help`"]),
    (["--no-such-option", "methods"], ["No such option", "`svdc --help`"]),
])
def test_issue_25_examples(args, needles, run, before_loading):
    assert_usage_error(run(args), *needles)


@pytest.mark.parametrize("opt", ["--debug", "--verbose", "-v"])
def test_global_option_after_the_command_says_where_it_goes(opt, run):
    assert_usage_error(run(["methods", opt]), f"No such option: {opt}", f"`svdc {opt} methods")


def test_debug_before_the_command_shows_the_traceback(monkeypatch):
    import sys

    from compressor import cli
    monkeypatch.setattr(sys, "argv", ["svdc", "--debug", "compress", "m", "--ration", "0.2"])
    with pytest.raises(Exception, match="No such option: --ration") as e:   # click's, raised
        cli.main()
    assert not isinstance(e.value, SystemExit)


def test_bare_svdc_prints_the_help(run):
    res = run([])
    assert res.code == 2
    assert "compress" in res.err and "internal error" not in res.err


def test_nproc_below_one_is_refused_before_loading(tmp_path):
    import subprocess
    import sys
    for cmd in (["compress", "no-such-model", "--method", "rtn", "-o", str(tmp_path / "o")],
                ["run", str(tmp_path / "r.yaml")]):
        r = subprocess.run([sys.executable, "-m", "compressor", *cmd, "--nproc", "0"],
                           capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("error: --nproc 0: the number of ranks")
    assert not (tmp_path / "o").exists()
