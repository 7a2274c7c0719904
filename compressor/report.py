"""report.json (everything), report.md (what a person reads) and plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from compressor.heal.report import markdown as heal_markdown
from compressor.heal.report import plots as heal_plots
from compressor.methods.plan.report import markdown as plan_markdown
from compressor.methods.plan.report import plots as plan_plots

log = logging.getLogger("svdc")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _short_info(info: dict[str, Any]) -> str:
    keep = []
    for k, v in info.items():
        if isinstance(v, (list, dict)):
            continue
        if isinstance(v, float):
            v = f"{v:.3g}"
        keep.append(f"{k}={v}")
    return ", ".join(keep)


def markdown(report: dict[str, Any]) -> str:
    t, m = report["totals"]["targets"], report["totals"]["model"]
    lines = [f"# svdc report: {report['model']['source']}", "",
             f"Stages: {' → '.join(s['method'] for s in report['recipe']['stages'])}  ",
             f"Command: `{report['command']}`  ",
             f"Seed {report['recipe']['calibration']['seed']}, calibration "
             f"{report['calibration']['nsamples']}×{report['calibration']['seqlen']} tokens of "
             f"{report['calibration']['dataset']}; device {report['device']}, dtype {report['dtype']}.", "",
             "## Size", "", "| | params before | stored elements after | bytes before | bytes after | bits/weight |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, b in (("targets", t), ("whole model", m)):
        lines.append(f"| {name} | {b['params_before']:,} | {b['params_after']:,} | {_fmt_bytes(b['bytes_before'])} | "
                     f"{_fmt_bytes(b['bytes_after'])} | {b['bits_per_weight']:.3f} |")
    split = t.get("bits_split") or {}
    if split:
        lines += ["", "Target bits per weight by storage: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in split.items())
                  + f" (sum {sum(split.values()):.3f})."]
    if report.get("eval"):
        lines += ["", "## Perplexity", "", "| dataset | split | seqlen | windows | ppl | dense ppl | partial |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for e in report["eval"]:
            dense = f"{e['dense_ppl']:.3f}" if "dense_ppl" in e else ""
            lines.append(f"| {e['dataset']} | {e.get('split', '')} | {e['seqlen']} | {e['n_windows']} | "
                         f"{e['ppl']:.3f} | {dense} | {'yes' if e.get('partial') else 'no'} |")
    if report.get("tasks"):
        tr = report["tasks"]
        dense_rows = {r["task"]: r for r in ((report.get("dense_eval") or {}).get("tasks") or {}).get("tasks", [])}
        lines += ["", f"## Tasks (lm-eval {tr['lm_eval_version']}"
                  + (f", limit {tr['limit']} per task: partial" if tr.get("limit") else "") + ")", "",
                  "| task | metric | value | ± stderr | dense | examples |", "|---|---|---:|---:|---:|---:|"]
        for r in tr["tasks"]:
            for k, v in r["metrics"].items():
                se = r["stderr"].get(k)
                d = dense_rows.get(r["task"], {}).get("metrics", {}).get(k)
                lines.append(f"| {r['task']} | {k} | {v:.4f} | {'' if se is None else f'{se:.4f}'} | "
                             f"{'' if d is None else f'{d:.4f}'} | {r['n_examples']}/{r['total_examples']} |")
    if report.get("numerics"):
        lines += ["", "## Numerics", "", "Departures from the textbook path (floors, retries); "
                  "per module in the table below.", "", "| event | modules | max | total | max at |",
                  "|---|---:|---:|---:|---|"]
        for k, e in report["numerics"].items():
            lines.append(f"| {k} | {e['modules']} | {e['max']} | {e['total']} | {e['max_module']} |")
    if report.get("expect"):
        lines += ["", "## Expectations", "", "| metric | expected | tol | got | ok |", "|---|---:|---:|---:|---|"]
        for e in report["expect"]:
            got = "n/a" if e["got"] is None else f"{e['got']:.4g}"
            lines.append(f"| {e['metric']} | {e['value']:.4g} | {e['tol']:.3g} | {got} | {'✓' if e['ok'] else '✗'} |")
    lines += heal_markdown(report)   # heal section (empty without a heal stage)
    lines += plan_markdown(report)   # plan section (empty without a plan stage)
    lines += ["", "## Time per stage", "", "| stage | seconds |", "|---|---:|"]
    for k, v in report["stage_seconds"].items():
        lines.append(f"| {k} | {v:.2f} |")
    pm = report["peak_memory"]
    mem = f"CPU peak RSS {_fmt_bytes(pm['cpu_peak_rss_bytes'])}"
    if "cuda_peak_allocated_bytes" in pm:
        mem += f", GPU peak allocated {_fmt_bytes(pm['cuda_peak_allocated_bytes'])}"
    g = report.get("gradients") or {}
    lines += ["", f"Peak memory: {mem}." + (f" Gradient pass: {g}" if g else ""), ""]
    for plot in report.get("plots", []):
        lines.append(f"![{plot}]({plot})")
    lines += ["", "## Per module", "",
              "| module | shape | bytes before → after | weight err | output err | s | details |",
              "|---|---|---|---:|---:|---:|---|"]
    for r in report["modules"]:
        oe = "" if r["output_rel_err"] is None else f"{r['output_rel_err']:.4f}"
        lines.append(f"| {r['name']} | {r['shape'][0]}×{r['shape'][1]} | {_fmt_bytes(r['bytes_before'])} → "
                     f"{_fmt_bytes(r['bytes_after'])} | {r['weight_rel_err']:.4f} | {oe} | {r['seconds']:.2f} | "
                     f"{_short_info(r['info'])} |")
    lines += ["", "## Versions", "", "```", json.dumps(report["versions"], indent=1), "```", ""]
    return "\n".join(lines)


def plots(report: dict[str, Any], folder: Path) -> list[str]:
    """Error per layer and rank/bits per layer, one line per module kind. Returns file names."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        log.warning("matplotlib missing: no plots")
        return []
    rows = report["modules"]
    kinds = sorted({r["kind"] for r in rows})
    out = []
    series = {k: [(r["layer"], r["output_rel_err"]) for r in rows
                  if r["kind"] == k and r["output_rel_err"] is not None] for k in kinds}
    if any(series.values()):   # a data-free run measures no output error: no empty plot
        fig, ax = plt.subplots(figsize=(8, 4))
        for k, pts in series.items():
            if pts:
                ax.plot(*zip(*pts), marker=".", label=k)
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("relative output error (calibration)")
        ax.set_title("Error per layer")
        ax.legend(fontsize=7, ncol=4)
        fig.tight_layout()
        fig.savefig(folder / "error_per_layer.png", dpi=110)
        plt.close(fig)
        out.append("error_per_layer.png")
    for key, label in (("rank", "rank"), ("bits_per_weight", "bits per weight")):
        pts_by_kind = {k: [(r["layer"], _find(r["info"], key)) for r in rows if r["kind"] == k] for k in kinds}
        pts_by_kind = {k: [(x, y) for x, y in v if y is not None] for k, v in pts_by_kind.items()}
        if not any(pts_by_kind.values()):
            continue
        fig, ax = plt.subplots(figsize=(8, 4))
        for k, pts in pts_by_kind.items():
            if pts:
                ax.plot(*zip(*pts), marker=".", label=k)
        ax.set_xlabel("decoder layer")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per layer")
        ax.legend(fontsize=7, ncol=4)
        fig.tight_layout()
        name = f"{key}_per_layer.png"
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        out.append(name)
    out += heal_plots(report, folder)   # heal_loss.png when a heal stage trained
    out += plan_plots(report, folder)   # plan_per_layer.png when a plan stage chose
    return out


def _find(info: dict[str, Any], key: str) -> float | None:
    for k, v in info.items():
        if k == key or k.endswith("." + key):
            if isinstance(v, (int, float)):
                return float(v)
    return None


def write_report(report: dict[str, Any], folder: Path) -> None:
    report["plots"] = plots(report, folder)
    (folder / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (folder / "report.md").write_text(markdown(report))
