"""svdc inspect: what a compressed checkpoint holds. Any path is handled: a file, an empty
or foreign folder, a corrupt config or report each get one line saying what it is."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from compressor.console import console
from compressor.errors import UserError

from .app import app


def _compression_config(src: Path) -> dict[str, Any]:
    from compressor.checkpoint.verify import read_config
    if src.exists() and not src.is_dir():
        raise UserError(f"{src} is a file; pass an svdc output folder")
    if not src.exists():
        raise UserError(f"{src} does not exist; pass an svdc output folder")
    cc = read_config(src).get("compression_config")
    if not cc:
        raise UserError(f"{src}: not an svdc compressed checkpoint (no compression_config in "
                        f"config.json)")
    modules = cc.get("modules") if isinstance(cc, dict) else None
    if not isinstance(modules, dict) or not all(
            isinstance(s, dict) and isinstance(s.get("parts"), list)
            and all(isinstance(p, dict) and "type" in p for p in s["parts"])
            for s in modules.values()):
        raise UserError(f"{src}/config.json: compression_config is malformed (modules/parts); "
                        f"the checkpoint is corrupt, re-create it")
    return cc


def _report(src: Path) -> dict[str, Any] | None:
    rep = src / "report.json"
    if not rep.is_file():
        console.print(f"no report.json in {escape(str(src))} (the checkpoint itself is described above)",
                      soft_wrap=True)
        return None
    try:
        r = json.loads(rep.read_text())
        t = r["totals"]
        line = (f"targets: {t['targets']['bits_per_weight']:.3f} bits/weight, "
                f"{t['targets']['bytes_after'] / 2**20:.1f} MiB (was {t['targets']['bytes_before'] / 2**20:.1f}); "
                f"model {t['model']['bytes_after'] / 2**20:.1f} MiB")
        evals = [f"ppl {e['dataset']}: {e['ppl']:.3f}{' (partial)' if e.get('partial') else ''}"
                 for e in r.get("eval") or []]
    except (OSError, ValueError, KeyError, TypeError) as e:
        console.print(f"report.json in {escape(str(src))} is unreadable ({type(e).__name__}); "
                      f"the checkpoint itself is described above", soft_wrap=True)
        return None
    for text in [line, *evals]:
        console.print(text)
    return r


@app.command()
def inspect(src: Path = typer.Argument(..., help="an svdc output folder"),
            verify: bool = typer.Option(False, "--verify", help="also check the weight files against the recorded sha256")) -> None:
    """What a compressed model holds: part types, sizes, weight hashes, the report's numbers."""
    from compressor.checkpoint.verify import HASHES, verify_weights
    cc = _compression_config(src)
    kinds = Counter(" + ".join(p["type"] for p in s["parts"]) for s in cc["modules"].values())
    tab = Table(title=f"{src}: {len(cc['modules'])} compressed linears, stored as {cc.get('dtype', '?')}")
    tab.add_column("parts")
    tab.add_column("modules", justify="right")
    for k, n in kinds.most_common():
        tab.add_row(k, str(n))
    console.print(tab)
    hashes = cc.get(HASHES)
    if isinstance(hashes, dict) and hashes:
        for name, h in sorted(hashes.items()):
            console.print(f"sha256 {escape(str(name))}: {escape(str(h))}", soft_wrap=True)
        if verify:
            verify_weights(src, cc)
            console.print(f"integrity: {len(hashes)} weight file(s) match their recorded sha256")
    else:
        console.print("integrity: no sha256 recorded (written by an older svdc); nothing to verify")
    report = _report(src)
    if report:
        _plan(report)


_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red", "white", "bright_black")


def _plan(report: dict[str, Any]) -> None:
    """A plan's choice: candidates by share of the weights, then bits per layer as one
    coloured bar per matrix (the report's plan_per_layer.png, in the terminal)."""
    from compressor.methods.plan.report import method_of, planned_rows, summary
    rows = planned_rows(report)
    if not rows:
        return
    tab = Table(title="plan: the candidate each matrix got")
    for col, just in (("candidate", "left"), ("matrices", "right"), ("weights", "right")):
        tab.add_column(col, justify=just)
    for cand, n, share in summary(rows):
        tab.add_row(escape(cand), str(n), f"{share:.1%}")
    console.print(tab)
    methods = sorted({method_of(r["info"]["candidate"]) for r in rows})
    colour = {m: _COLOURS[k % len(_COLOURS)] for k, m in enumerate(methods)}
    console.print("bits per weight by layer (one bar per matrix, 1 block = 1 bit): "
                  + "  ".join(f"[{colour[m]}]■ {escape(m)}[/]" for m in methods), soft_wrap=True)
    by_layer: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_layer.setdefault(r["layer"], []).append(r)
    for layer, rs in sorted(by_layer.items()):
        bars = " ".join(f"[{colour[method_of(r['info']['candidate'])]}]"
                        f"{'█' * max(1, round(r['info'].get('bits_per_weight', 0)))}[/]" for r in rs)
        console.print(f"layer {layer:>3} {bars}", soft_wrap=True, highlight=False)
