"""One frontier for the whole tool: perplexity against written bits per weight, every single
method at its natural budgets and the planner (``--target-bits``) at several budgets, on the
builtin test split and on news text that this repository does not hold.

    python scripts/frontier.py                       # every row not yet in the results file
    python scripts/frontier.py --only plan-b4 gptq-w4-g64
    python scripts/frontier.py --report-only         # table and plot from the results file

Each row is one `svdc compress` (calibration: 8 x 512 builtin tokens, seed 0; storage
bfloat16, so dense is 16 bits per weight) scored on the first 16 windows of 512 tokens of the
builtin test split, then one `svdc eval` of the same output on the news text (the 299
Australian news articles of the gensim 4.4.0 wheel's `lee_background.cor`, DATA.md), 16
windows of 512. The planner rows share one measures file, so the menu is priced once
(the first planner row pays the planning pass; its time is in that row). Results go to
benchmarks/frontier.jsonl (one JSON line per row, with the commit and the commands),
benchmarks/frontier.png and benchmarks/frontier.md. Nothing is chosen on the test split or
the news text: the rows are the methods' natural budgets and the planner's menu is its
default; the planner picks on calibration data only.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench_out" / "frontier"
RESULTS = ROOT / "benchmarks" / "frontier.jsonl"
MODEL = "smollm2-135m"
COMMON = ["--calib", "builtin", "--nsamples", "8", "--seqlen", "512", "--seed", "0",
          "--device", "cpu", "--dtype", "float32", "--storage-dtype", "bfloat16",
          "--eval", "builtin", "--eval-windows", "16", "--force"]
NEWS_MEMBER = "gensim/test/test_data/lee_background.cor"

# (id, family, flags): the planner at B = 3 .. 6 first (the first planner row prices the menu),
# then each single method at its natural budgets, the slowest last.
ROWS: list[tuple[str, str, list[str]]] = [
    (f"plan-b{b:g}", "plan", ["--target-bits", f"{b:g}", "--set",
                              f"measures_file={OUT / 'menu.json'}"])
    for b in (4, 3, 3.5, 5, 6)
] + [
    ("gptq-w2-g64", "gptq", ["--method", "gptq", "--bits", "2", "--group-size", "64"]),
    ("gptq-w3-g128", "gptq", ["--method", "gptq", "--bits", "3", "--group-size", "128"]),
    ("gptq-w3-g64", "gptq", ["--method", "gptq", "--bits", "3", "--group-size", "64"]),
    ("gptq-w4-g128", "gptq", ["--method", "gptq", "--bits", "4", "--group-size", "128"]),
    ("gptq-w4-g64", "gptq", ["--method", "gptq", "--bits", "4", "--group-size", "64"]),
    ("gptq-w4-g32", "gptq", ["--method", "gptq", "--bits", "4", "--group-size", "32"]),
    ("rtn-w3-g128", "rtn", ["--method", "rtn", "--bits", "3", "--group-size", "128"]),
    ("rtn-w4-g128", "rtn", ["--method", "rtn", "--bits", "4", "--group-size", "128"]),
    # SmolLM2's weights come from a Q4_1 g32 file: 4-bit g32 is (nearly) its own grid
    ("rtn-w4-g32", "rtn", ["--method", "rtn", "--bits", "4", "--group-size", "32"]),
    # LQ-LoRA's own ILP over a 2x2 menu (NF3/NF4, blocks 64/128): its full 4x5 menu takes
    # over an hour here
    ("lqlora-b3.5-r8", "lqlora", ["--method", "lqlora", "--bits", "3.5", "--rank", "8",
                                  "--set", "nf_bits=[3,4]", "--set", "block_sizes=[64,128]"]),
    ("rtn-w8-g128", "rtn", ["--method", "rtn", "--bits", "8", "--group-size", "128"]),
    ("gwq-w3-o1", "gwq", ["--method", "gwq", "--bits", "3", "--group-size", "128",
                          "--outlier-frac", "0.01"]),
    ("eora-gptq-w3-r32", "eora", ["--method", "eora", "--base", "gptq", "--bits", "3",
                                  "--group-size", "128", "--rank", "32"]),
    ("eora-gptq-w4-r8", "eora", ["--method", "eora", "--base", "gptq", "--bits", "4",
                                 "--group-size", "128", "--rank", "8"]),
    ("wsvd-r0.2", "lowrank-16", ["--method", "whitened-svd", "--ratio", "0.2"]),
    ("wsvd-r0.2-f8", "lowrank-8", ["--method", "whitened-svd", "--ratio", "0.2",
                                   "--lowrank-bits", "8"]),
    ("wsvd-r0.5-f8", "lowrank-8", ["--method", "whitened-svd", "--ratio", "0.5",
                                   "--lowrank-bits", "8"]),
    ("fwsvd-r0.2", "lowrank-16", ["--method", "fwsvd", "--ratio", "0.2"]),
    ("fwsvd-r0.2-f8", "lowrank-8", ["--method", "fwsvd", "--ratio", "0.2", "--lowrank-bits", "8"]),
    ("cospadi-r0.2", "cospadi", ["--method", "cospadi", "--ratio", "0.2"]),
    ("lost-r0.2", "lost", ["--method", "lost", "--ratio", "0.2"]),
]


def _commit() -> str:
    """The code state that made a row: the git tree of compressor/ (what runs; a change to
    this script or the docs does not change it), '+dirty' when compressor/ has local edits."""
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD:compressor"],
                       capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "compressor"],
                           capture_output=True, text=True).stdout.strip()
    return "tree " + r.stdout.strip() + ("+dirty" if dirty else "")


def news_text() -> Path:
    """lee_background.cor as blank-line separated articles (downloaded once with pip)."""
    out = OUT / "lee_news.txt"
    if out.is_file():
        return out
    OUT.mkdir(parents=True, exist_ok=True)
    wheels = sorted(OUT.glob("gensim-4.4.0-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                        "--only-binary=:all:", "gensim==4.4.0", "-d", str(OUT)], check=True)
        wheels = sorted(OUT.glob("gensim-4.4.0-*.whl"))
    with zipfile.ZipFile(wheels[0]) as zf:
        lines = zf.read(NEWS_MEMBER).decode().splitlines()
    out.write_text("\n\n".join(ln.strip() for ln in lines if ln.strip()) + "\n")
    return out


def _svdc(args: list[str], threads: int) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "compressor", *args], capture_output=True,
                       text=True, env=env, cwd=ROOT)
    return r, time.perf_counter() - t0


def run_row(rid: str, family: str, flags: list[str], threads: int, news: Path) -> dict:
    out = OUT / rid
    cmd = [MODEL, *flags, *COMMON, "-o", str(out)]
    proc, secs = _svdc(["compress", *cmd], threads)
    row = {"id": rid, "family": family, "commit": _commit(), "threads": threads,
           "command": "svdc compress " + shlex.join(cmd), "compress_s": round(secs, 1)}
    if proc.returncode != 0:
        row["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        return row
    rep = json.loads((out / "report.json").read_text())
    row["bits_per_weight"] = rep["totals"]["targets"]["bits_per_weight"]
    row["model_bytes"] = rep["totals"]["model"]["bytes_after"]
    row["ppl_builtin"] = rep["eval"][0]["ppl"]
    row["stage_seconds"] = rep["stage_seconds"]
    if family == "plan":
        from collections import Counter
        row["choice"] = dict(Counter(m["info"]["candidate"] for m in rep["modules"]).most_common())
    ev = ["eval", str(out), "--dataset", str(news), "--split", "all", "--seqlen", "512",
          "--max-windows", "16", "--json"]
    proc, secs = _svdc(ev, threads)
    row["news_command"] = "svdc " + shlex.join(ev)
    if proc.returncode == 0:
        res = _eval_json(proc.stdout)
        row["ppl_news"], row["news_revision"] = res.get("ppl"), res.get("revision")
    else:
        row["news_error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
    return row


def _eval_json(text: str) -> dict:
    """`svdc eval --json`'s result (the JSON object on stdout)."""
    return json.loads(text[text.index("{"):]) if "{" in text else {}


def dense_row(threads: int, news: Path) -> dict:
    row = {"id": "dense", "family": "dense", "commit": _commit(), "bits_per_weight": 16.0}
    for label, ds in (("builtin", ["--dataset", "builtin", "--split", "test"]),
                      ("news", ["--dataset", str(news), "--split", "all"])):
        args = ["eval", MODEL, *ds, "--seqlen", "512", "--max-windows", "16", "--device", "cpu",
                "--dtype", "float32", "--json"]
        proc, _ = _svdc(args, threads)
        row[f"ppl_{label}"] = _eval_json(proc.stdout).get("ppl") if proc.returncode == 0 else None
    return row


def load_results() -> dict[str, dict]:
    rows = {}
    if RESULTS.is_file():
        for line in RESULTS.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows[r["id"]] = r          # the latest line of an id wins
    return rows


def report(rows: dict[str, dict]) -> None:
    """benchmarks/frontier.md (table) and benchmarks/frontier.png (two panels)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows.values() if r.get("bits_per_weight") is not None and "error" not in r]
    ok.sort(key=lambda r: (r["family"] == "plan", r["bits_per_weight"]))
    dense = rows.get("dense", {})
    commits = sorted({r["commit"] for r in ok})
    lines = [f"`scripts/frontier.py` on `{MODEL}` (fp32 compute, **bfloat16 storage**: dense is "
             f"16 bits per weight), code state{'s' if len(commits) > 1 else ''} (git tree of compressor/) "
             f"{', '.join(f'`{c}`' for c in commits)}. Calibration 8×512 builtin tokens (seed 0); "
             f"perplexity on the first 16 windows of 512 tokens of the builtin test split and of "
             f"the news text (`lee_background.cor`, gensim 4.4.0 wheel, not in this repository). "
             f"Dense (the float32 checkpoint, scored as is): {_f(dense.get('ppl_builtin'))} builtin, {_f(dense.get('ppl_news'))} news. "
             f"Bits per weight are written bytes over the target matrices. Commands per row in "
             f"`benchmarks/frontier.jsonl`.", ""]
    if len(commits) > 1:                 # say what differs between the code states
        trees = [c.split()[1].removesuffix("+dirty") for c in commits]
        diff = subprocess.run(["git", "-C", str(ROOT), "diff", "--name-only", *trees[:2]],
                              capture_output=True, text=True).stdout.split()
        lines += [f"The code states differ in compressor/ only in: {', '.join(diff) or '?'}.", ""]
    lines += _planner_lines(ok, dense)
    lines += ["| row | family | bits/weight | ppl builtin | ppl news | compress s | commit |",
              "|---|---|---:|---:|---:|---:|---|"]
    for r in ok:
        lines.append(f"| {r['id']} | {r['family']} | {r['bits_per_weight']:.3f} | "
                     f"{_f(r.get('ppl_builtin'))} | {_f(r.get('ppl_news'))} | "
                     f"{r.get('compress_s', '')} | {r['commit']} |")
    failed = [r for r in rows.values() if "error" in r]
    if failed:
        lines += ["", "Rows that failed: " + "; ".join(f"{r['id']}: {' '.join(r['error'])}"
                                                      for r in failed)]
    lines += ["", "![frontier](benchmarks/frontier.png)"]
    (ROOT / "benchmarks" / "frontier.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in ((axes[0], "ppl_builtin", "builtin test split (16x512)"),
                           (axes[1], "ppl_news", "news text, lee_background (16x512)")):
        fams = sorted({r["family"] for r in ok if r["family"] not in ("plan", "dense")})
        for f in fams:
            pts = [(r["bits_per_weight"], r[key]) for r in ok if r["family"] == f and r.get(key)]
            if pts:
                ax.scatter(*zip(*pts), label=f, s=25)
        plan = sorted((r["bits_per_weight"], r[key]) for r in ok if r["family"] == "plan" and r.get(key))
        if plan:
            ax.plot(*zip(*plan), "k-o", label="plan (--target-bits)", lw=1.5)
        if dense.get(key):
            ax.axhline(dense[key], color="grey", ls="--", lw=1, label="dense (fp32 checkpoint)")
        ax.set_yscale("log")
        ax.set_xlabel("written bits per weight (targets)")
        ax.set_ylabel("perplexity")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"svdc frontier on {MODEL}")
    fig.tight_layout()
    fig.savefig(ROOT / "benchmarks" / "frontier.png", dpi=110)


def _planner_lines(ok: list[dict], dense: dict) -> list[str]:
    """Each planner budget against every single method that writes at most that many bits."""
    out = ["| --target-bits | written | ppl builtin (× dense) | best single ≤ B, builtin | "
           "ppl news (× dense) | best single ≤ B, news | at or below every single? |",
           "|---:|---:|---:|---|---:|---|---|"]
    singles = [r for r in ok if r["family"] != "plan"]
    for p in (r for r in ok if r["family"] == "plan"):
        budget = float(p["id"].removeprefix("plan-b"))
        fit = [r for r in singles if r["bits_per_weight"] <= budget + 1e-9]
        cells, wins = [], []
        for key in ("ppl_builtin", "ppl_news"):
            cands = [r for r in fit if r.get(key) is not None]
            best = min(cands, key=lambda r: r[key]) if cands else None
            ratio = (f" ({p[key] / dense[key]:.3f}×)" if p.get(key) and dense.get(key) else "")
            cells += [f"{_f(p.get(key))}{ratio}",
                      f"{best['id']} {_f(best[key])}" if best else "none fits"]
            wins.append(best is None or (p.get(key) is not None and p[key] <= best[key]))
        out.append(f"| {budget:g} | {p['bits_per_weight']:.3f} | {cells[0]} | {cells[1]} | "
                   f"{cells[2]} | {cells[3]} | {'yes' if all(wins) else '**no**'} |")
    return out + [""]


def _f(v) -> str:
    return "" if v is None else (f"{v:,.2f}" if v < 1e4 else f"{v:.3g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="row ids to (re)run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
    done = load_results()
    if not a.report_only:
        news = news_text()
        todo = [r for r in ROWS if (r[0] in a.only if a.only else r[0] not in done)]
        if "dense" not in done or (a.only and "dense" in a.only):
            todo_dense = True
        else:
            todo_dense = False
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        if todo_dense:
            row = dense_row(a.threads, news)
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
        for rid, fam, flags in todo:
            row = run_row(rid, fam, flags, a.threads, news)
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
        done = load_results()
    report(done)


if __name__ == "__main__":
    main()
