"""The plan's part of the report: which candidate each matrix got, the bits it writes
there, and a plot of bits per layer coloured by method (report.md, the PNG, svdc inspect).
Read from the module rows' info, so it works on any report.json that holds a plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOT = "plan_per_layer.png"


def planned_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report.get("modules") or [] if "candidate" in (r.get("info") or {})]


def method_of(candidate: str) -> str:
    """'gptq(bits=3,...)+eora(rank=8)' -> 'gptq+eora': the colour of a plotted matrix."""
    return "+".join(part.split("(")[0] for part in candidate.split("+"))


def summary(rows: list[dict[str, Any]]) -> list[tuple[str, int, float]]:
    """(candidate, matrices, share of the target weights), most weights first."""
    total = sum(r["shape"][0] * r["shape"][1] for r in rows) or 1
    acc: dict[str, list[float]] = {}
    for r in rows:
        a = acc.setdefault(r["info"]["candidate"], [0, 0.0])
        a[0] += 1
        a[1] += r["shape"][0] * r["shape"][1] / total
    return sorted(((k, int(v[0]), v[1]) for k, v in acc.items()), key=lambda t: -t[2])


def markdown(report: dict[str, Any]) -> list[str]:
    rows = planned_rows(report)
    if not rows:
        return []
    lines = ["", "## Plan", "", "Candidates chosen by the ILP (share of the target weights):", "",
             "| candidate | matrices | weights |", "|---|---:|---:|"]
    lines += [f"| {c} | {n} | {s:.1%} |" for c, n, s in summary(rows)]
    lines += ["", "| module | candidate | bits/weight | planned error | error in the pass |",
              "|---|---|---:|---:|---:|"]
    for r in rows:
        i = r["info"]
        lines.append(f"| {r['name']} | {i['candidate']} | {i.get('bits_per_weight', 0):.3f} | "
                     f"{i['plan_error_planned']:.4g} | {i['plan_error']:.4g} |")
    lines += ["", "The menu's error and bits of every candidate on every matrix are in "
              "report.json (`menu_errors`, `menu_bits` per module, candidates in the recipe's "
              "menu order)."]
    return lines


def plots(report: dict[str, Any], folder: Path) -> list[str]:
    rows = planned_rows(report)
    if not rows:
        return []
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({method_of(r["info"]["candidate"]) for r in rows})
    colours = {m: plt.cm.tab10(k % 10) for k, m in enumerate(methods)}
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.06), 4))
    for x, r in enumerate(rows):
        ax.bar(x, r["info"].get("bits_per_weight", 0), width=0.9,
               color=colours[method_of(r["info"]["candidate"])])
    layers = [r["layer"] for r in rows]
    starts = [x for x in range(len(rows)) if x == 0 or layers[x] != layers[x - 1]]
    ax.set_xticks(starts, [str(layers[x]) for x in starts], fontsize=6)
    ax.set_xlabel("decoder layer (one bar per matrix, in layer order)")
    ax.set_ylabel("bits per weight written")
    ax.set_title("Plan: bits per matrix, coloured by method")
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colours[m]) for m in methods],
              labels=methods, fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / PLOT, dpi=110)
    plt.close(fig)
    return [PLOT]
