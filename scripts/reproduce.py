"""Run recipes and check each result against the recipe's `expect` block (the CI gate).

    python scripts/reproduce.py recipes/small/*.yaml [--out DIR] [--keep] [--threads N]

Recipes run one after another, in this process, through ``compressor.api.compress``. A
recipe that fails (bad file, crash, no `expect` block) is reported in the table and the
others still run. The last line is ``reproduce: N passed, M failed``; the exit status is 0
only when every expectation of every recipe was met.

Why a script and not ``svdc run`` in a loop: one table for the whole set, one exit status,
and one Python process (the model cache and imports are paid once).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


class NothingToCheck(Exception):
    """A recipe without an `expect` block cannot pass or fail: treat it as an error."""


@dataclass
class Outcome:
    """What one recipe gave: its expectation rows, or the error that stopped it."""

    recipe: str
    seconds: float = 0.0
    checks: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.checks) and all(c["ok"] for c in self.checks)


def _output_names(paths: list[Path]) -> list[str]:
    """One output folder name per recipe: its stem, made unique (small/x and x share a stem)."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        names.append(p.stem if n == 0 else f"{p.stem}-{n + 1}")
    return names


def run_one(path: Path, output: Path) -> Outcome:
    """Load, run and check one recipe; every failure becomes ``Outcome.error``."""
    from compressor.api import compress
    from compressor.errors import UserError
    from compressor.recipe import load_recipe

    out = Outcome(recipe=str(path))
    t0 = time.perf_counter()
    try:
        recipe = load_recipe(path)
        if not recipe.expect:
            raise NothingToCheck("nothing to check: the recipe has no `expect` block")
        recipe.output = str(output)
        result = compress(recipe, force=True, command=f"reproduce {path}")
        out.checks = list(result.report.get("expect") or [])
    except KeyboardInterrupt:
        raise
    except (UserError, NothingToCheck) as e:
        out.error = str(e)
    except Exception as e:  # noqa: BLE001 - one recipe's failure must not stop the others
        out.error = f"{type(e).__name__}: {e}"
    out.seconds = time.perf_counter() - t0
    return out


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.6g}"


def table(outcomes: list[Outcome]) -> Table:
    tab = Table(title="reproduced recipes")
    for c, j in (("recipe", "left"), ("metric", "left"), ("expected ± tol", "right"),
                 ("got", "right"), ("ok", "center"), ("seconds", "right")):
        tab.add_column(c, justify=j)
    for o in outcomes:
        secs = f"{o.seconds:.1f}"
        if o.error is not None:
            tab.add_row(o.recipe, "error", "", o.error, "[red]✗[/]", secs)
            continue
        for i, c in enumerate(o.checks):
            mark = "[green]✓[/]" if c["ok"] else "[red]✗[/]"
            tab.add_row(o.recipe if i == 0 else "", c["metric"], f"{_fmt(c['value'])} ± {_fmt(c['tol'])}",
                        _fmt(c["got"]), mark, secs if i == 0 else "")
    return tab


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="+", type=Path, help="recipe YAML files (each needs an expect block)")
    ap.add_argument("--out", type=Path, default=None,
                    help="write outputs to DIR/<recipe name> (replaced if present; kept); "
                         "default: a temporary folder, removed at the end")
    ap.add_argument("--keep", action="store_true", help="keep the temporary outputs and say where")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="show the per-layer numerics log (damping, floors); default: warnings only")
    args = ap.parse_args(argv)

    import logging

    from compressor.console import setup_logging

    setup_logging(verbose=args.verbose)
    if not args.verbose:
        logging.getLogger("svdc").setLevel(logging.WARNING)
    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    root = args.out or Path(tempfile.mkdtemp(prefix="svdc-reproduce-"))
    outcomes: list[Outcome] = []
    try:
        for path, name in zip(args.recipes, _output_names(args.recipes)):
            console.print(f"reproduce: running {path}", soft_wrap=True)
            o = run_one(path, root / name)
            outcomes.append(o)
            status = "ok" if o.ok else (f"error: {o.error}" if o.error else "missed")
            console.print(f"reproduce: {path} {status} ({o.seconds:.1f} s)", soft_wrap=True)
    finally:
        if args.out is None and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    console.print(table(outcomes))
    if args.out is not None or args.keep:
        console.print(f"outputs in {root}/")
    passed = sum(o.ok for o in outcomes)
    print(f"reproduce: {passed} passed, {len(outcomes) - passed} failed", flush=True)
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
