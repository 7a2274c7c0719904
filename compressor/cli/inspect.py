"""svdc inspect: what a compressed checkpoint holds."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from compressor.console import console
from compressor.errors import UserError

from .app import app


@app.command()
def inspect(src: Path = typer.Argument(..., help="an svdc output folder")) -> None:
    """What a compressed model holds: part types, sizes, and the report's headline numbers."""
    from collections import Counter
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{src}: no config.json; pass an svdc output folder")
    cc = json.loads(cfg_path.read_text()).get("compression_config")
    if not cc:
        raise UserError(f"{src}: not an svdc compressed checkpoint (no compression_config)")
    kinds = Counter(" + ".join(p["type"] for p in s["parts"]) for s in cc["modules"].values())
    tab = Table(title=f"{src}: {len(cc['modules'])} compressed linears, stored as {cc['dtype']}")
    tab.add_column("parts")
    tab.add_column("modules", justify="right")
    for k, n in kinds.most_common():
        tab.add_row(k, str(n))
    console.print(tab)
    rep = src / "report.json"
    if rep.is_file():
        r = json.loads(rep.read_text())
        t = r["totals"]
        console.print(f"targets: {t['targets']['bits_per_weight']:.3f} bits/weight, "
                      f"{t['targets']['bytes_after'] / 2**20:.1f} MiB (was {t['targets']['bytes_before'] / 2**20:.1f}); "
                      f"model {t['model']['bytes_after'] / 2**20:.1f} MiB")
        for e in r.get("eval") or []:
            console.print(f"ppl {e['dataset']}: {e['ppl']:.3f}{' (partial)' if e.get('partial') else ''}")
