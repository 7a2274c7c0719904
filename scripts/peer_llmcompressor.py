#!/usr/bin/env python
"""svdc's GPTQ (and GPTQ + EoRA) side by side with llmcompressor's GPTQ, in one run.

    python scripts/peer_llmcompressor.py [--bits 3] [--group-size 128] [--threads 1]

1. Makes its own venv (bench_out/venvs/llmcompressor, git-ignored) and installs llmcompressor
   there with torch==2.13.0 pinned in the same pip command and a constraints file (any other
   torch spec pulls gigabytes of CUDA wheels).
2. Saves the exact calibration token windows svdc draws (compressor.data.calibration_windows,
   the matrix's dataset / nsamples / seqlen / seed) to a safetensors file.
3. Takes svdc's numbers (gptq; gptq + eora) from the benchmark rows of the same recipe on the
   same windows (compress-only time and peak RSS, measured before evaluation), or with
   --rerun-svdc compresses them again in child processes; runs
   llmcompressor (GPTQModifier, same bits / group size / damping / block size, no act-order)
   inside its venv on the same windows; each child's wall time and peak RSS are its own.
4. Evaluates all three with svdc's evaluate on the same held-out windows (llmcompressor's
   output through a dense checkpoint that plain transformers loads) and writes
   benchmarks/peer_llmcompressor.json; scripts/bench.py --report-only renders it.
A failure at any step is recorded with its real error line, never papered over.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    ROOT,
    library_versions,
    load_matrix,
    machine_facts,
    peak_rss_bytes,
    recipe_dict,
    rel,
    row_by_id,
)

LLMC_VERSION = "0.14.0.1"
TORCH_PIN = "torch==2.13.0"


def sh(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[int, float]:
    t = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env).returncode
    return rc, time.perf_counter() - t


def last_error(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errs = [ln for ln in lines if "Error" in ln or "error:" in ln.lower()]
    return (errs or lines or ["(empty log)"])[-1].strip()[:400]


def install(venv: Path, work: Path) -> dict[str, Any]:
    py = venv / "bin" / "python"
    log = work / "install.log"
    if py.is_file() and subprocess.run([str(py), "-c", "import llmcompressor"], capture_output=True).returncode == 0:
        return {"status": "ok", "reused": True, "venv": rel(venv)}
    rc, _ = sh(["python3", "-m", "venv", str(venv)], log)
    if rc != 0:
        return {"status": "error", "error": last_error(log)}
    cons = work / "constraints.txt"
    cons.write_text(TORCH_PIN + "\n")
    rc, secs = sh([str(py), "-m", "pip", "install", "-q", "-c", str(cons), f"llmcompressor=={LLMC_VERSION}",
                   TORCH_PIN], log)
    if rc != 0:
        return {"status": "error", "error": last_error(log), "seconds": secs}
    return {"status": "ok", "reused": False, "venv": rel(venv), "seconds": secs,
            "command": f"{rel(py)} -m pip install -c constraints.txt llmcompressor=={LLMC_VERSION} {TORCH_PIN}"}


def save_windows(matrix: dict[str, Any], path: Path) -> tuple[str, dict[str, Any]]:
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from compressor.data import calibration_windows
    from compressor.models import resolve_model
    folder = str(resolve_model(matrix["model"]).path)
    tok = AutoTokenizer.from_pretrained(folder)
    c = matrix["calibration"]
    w = calibration_windows(tok, c["dataset"], c["nsamples"], c["seqlen"], c["seed"])
    save_file({"input_ids": w.contiguous()}, str(path))
    return folder, {"shape": list(w.shape), "file": rel(path), "first_ids": w[0, :8].tolist()}


def svdc_worker(matrix: dict[str, Any], rid: str, work: Path, device: str, out_json: Path) -> None:
    """Child process: compress one matrix row with svdc, no evaluation (time and RSS only)."""
    from compressor.api import compress
    from compressor.recipe import parse_recipe
    row = row_by_id(matrix, rid)
    d = recipe_dict(matrix, row, work / f"svdc-{rid}", device, None)
    d["eval"] = None
    t = time.perf_counter()
    rep = compress(parse_recipe(d, rid), force=True).report
    out_json.write_text(json.dumps({"status": "ok", "wall_seconds": time.perf_counter() - t,
                                    "stage_seconds": rep["stage_seconds"], "totals": rep["totals"],
                                    "peak_rss_bytes": peak_rss_bytes(), "output": str(work / f"svdc-{rid}")}))


def run_child(args: list[str], log: Path, out_json: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    out_json.unlink(missing_ok=True)
    rc, secs = sh(args, log, env)
    res = json.loads(out_json.read_text()) if out_json.is_file() else {"status": "error", "error": last_error(log)}
    res["child_wall_seconds"] = secs
    res["exit_code"] = rc
    return res


def evaluate_all(matrix: dict[str, Any], models: dict[str, dict[str, Any]], threads: int | None) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import compressor
    from compressor.evaluate import evaluate
    if threads:
        torch.set_num_threads(threads)
    ev = matrix["eval"]
    for name, m in models.items():
        if m.get("status") != "ok" or m.get("ppl") is not None:
            continue
        try:
            if m["kind"] == "svdc":
                model = compressor.load(m["output"])
                tok = AutoTokenizer.from_pretrained(m["output"])
            else:
                model = AutoModelForCausalLM.from_pretrained(m["dense_dir"], dtype=torch.float32)
                tok = AutoTokenizer.from_pretrained(m["dense_dir"])
            from compressor.parts.base import materialized
            with materialized(model):   # packed weights decoded once, not per window
                r = evaluate(model, tok, ev["dataset"], ev["seqlen"], max_windows=ev.get("max_windows"))
            m["ppl"], m["eval"] = r["ppl"], {k: r[k] for k in ("n_windows", "total_windows", "partial", "label",
                                                               "scored_tokens", "seqlen", "elapsed_s")}
        except Exception as e:  # noqa: BLE001 - recorded, not hidden
            m["eval_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def compress_seconds(m: dict[str, Any]) -> float | None:
    """Time to compress, model load / write / eval excluded (same scope for both tools)."""
    if m.get("kind") == "svdc" and "stage_seconds" in m:
        s = m["stage_seconds"]
        return sum(v for k, v in s.items() if k in ("data", "gradients", "plan", "layers"))
    return m.get("oneshot_seconds")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--matrix", default=str(ROOT / "scripts" / "bench_matrix.yaml"))
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--svdc-rows", nargs="*", default=["gptq-w3-g64", "gptq-w3-g64+eora-r32"])
    p.add_argument("--also-try-group-size", type=int, nargs="*", default=[128],
                   help="first try llmcompressor at these group sizes and record whether it works")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--peer-actorder", nargs="+", default=["none", "static"],
                   choices=["none", "static", "group", "weight"],
                   help="run llm-compressor once per actorder (none: as the first side-by-side; "
                        "static: its library default)")
    p.add_argument("--venv", default=str(ROOT / "bench_out" / "venvs" / "llmcompressor"))
    p.add_argument("--work", default=str(ROOT / "bench_out" / "peer"))
    p.add_argument("--out", default=str(ROOT / "benchmarks"))
    p.add_argument("--install-only", action="store_true", help="only make the venv")
    p.add_argument("--rerun-svdc", action="store_true",
                   help="compress the svdc rows again here instead of reusing benchmarks/results.json")
    p.add_argument("--svdc-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-json", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    matrix = load_matrix(a.matrix)
    work, venv = Path(a.work), Path(a.venv)
    work.mkdir(parents=True, exist_ok=True)
    if a.svdc_worker:
        import torch
        if a.threads:
            torch.set_num_threads(a.threads)
        svdc_worker(matrix, a.svdc_worker, work, "cpu", Path(a.worker_json))
        return 0
    if a.install_only:
        print(json.dumps(install(venv, work), indent=1))
        return 0
    for rid in a.svdc_rows:
        st = row_by_id(matrix, rid)["stages"][0]
        if st.get("bits") != a.bits or st.get("group_size") != a.group_size:
            raise SystemExit(f"row {rid} is not {a.bits} bit g{a.group_size}: pick matching --svdc-rows")
    result: dict[str, Any] = {"bits": a.bits, "group_size": a.group_size, "machine": machine_facts("cpu"),
                              "versions_svdc_venv": library_versions(), "calibration": matrix["calibration"],
                              "eval": matrix["eval"], "started_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "command": "python scripts/peer_llmcompressor.py " + " ".join(sys.argv[1:])}
    t0 = time.perf_counter()
    print("[peer] installing llmcompressor into its venv ...", flush=True)
    result["install"] = install(venv, work)
    folder, result["windows"] = save_windows(matrix, work / "calib_windows.safetensors")
    result["model_folder"] = folder
    models: dict[str, dict[str, Any]] = {}
    thr = ["--threads", str(a.threads)] if a.threads else []
    bench_rows = json.loads((Path(a.out) / "results.json").read_text())["rows"] \
        if (Path(a.out) / "results.json").is_file() else {}
    for rid in a.svdc_rows:
        b = bench_rows.get(rid, {})
        if not a.rerun_svdc and b.get("status") == "ok" and b.get("peak_rss_compress_bytes"):
            # The benchmark row ran the same recipe on the same windows: reuse its numbers.
            models[f"svdc {rid}"] = {"kind": "svdc", "row": rid, "status": "ok", "from": "benchmarks/results.json",
                                     "stage_seconds": b["stage_seconds"], "totals": b["totals"],
                                     "peak_rss_bytes": b["peak_rss_compress_bytes"], "ppl": b["ppl"],
                                     "eval": b["eval"], "child_wall_seconds": b.get("process_seconds"),
                                     "started_at": b.get("started_at"), "loadavg_1m": b["machine"].get("loadavg_1m")}
            continue
        print(f"[peer] svdc {rid} ...", flush=True)
        m = run_child([sys.executable, str(Path(__file__).resolve()), "--matrix", a.matrix, "--work", str(work),
                       "--svdc-worker", rid, "--worker-json", str(work / f"{rid}.json"), *thr],
                      work / f"svdc-{rid}.log", work / f"{rid}.json")
        m.update(kind="svdc", row=rid)
        models[f"svdc {rid}"] = m
    env = {**os.environ, "PYTHONPATH": ""}
    result["attempts"] = {}
    for gs in (a.also_try_group_size if result["install"]["status"] == "ok" else []):
        print(f"[peer] llmcompressor GPTQ at group size {gs} (attempt) ...", flush=True)
        t = work / f"llmc-g{gs}"
        m = run_child([str(venv / "bin" / "python"), str(ROOT / "scripts" / "peer_llmc_worker.py"),
                       "--model", folder, "--windows", str(work / "calib_windows.safetensors"),
                       "--bits", str(a.bits), "--group-size", str(gs), "--dense-out", str(t) + "-dense",
                       "--compressed-out", str(t) + "-compressed", "--json", str(t) + ".json", *thr],
                      Path(str(t) + ".log"), Path(str(t) + ".json"), env)
        result["attempts"][f"group_size {gs}"] = {k: m.get(k) for k in ("status", "error", "divisibility_error",
                                                                         "oneshot_seconds", "child_wall_seconds")}
    peers = []
    for order in a.peer_actorder:
        name = "llmcompressor gptq" + ("" if order == "none" else f" actorder={order}")
        peers.append(name)
        if result["install"]["status"] != "ok":
            models[name] = {"kind": "llmcompressor", "status": "error",
                            "error": "install failed: " + result["install"]["error"]}
            continue
        print(f"[peer] {name} ...", flush=True)
        tag = "llmc" if order == "none" else f"llmc-{order}"
        m = run_child([str(venv / "bin" / "python"), str(ROOT / "scripts" / "peer_llmc_worker.py"),
                       "--model", folder, "--windows", str(work / "calib_windows.safetensors"),
                       "--bits", str(a.bits), "--group-size", str(a.group_size), "--actorder", order,
                       "--dense-out", str(work / f"{tag}-dense"),
                       "--compressed-out", str(work / f"{tag}-compressed"),
                       "--json", str(work / f"{tag}.json"), *thr],
                      work / f"{tag}.log", work / f"{tag}.json", env)
        m["kind"] = "llmcompressor"
        models[name] = m
    print("[peer] evaluating ...", flush=True)
    evaluate_all(matrix, models, a.threads)
    for m in models.values():
        m["compress_seconds"] = compress_seconds(m)
        m["peak_rss"] = m.get("peak_rss_bytes")
    ratios: dict[str, dict[str, float]] = {}
    for pname in peers:
        peer = models[pname]
        for name, m in models.items():
            if m["kind"] != "svdc" or peer.get("status") != "ok" or m.get("status") != "ok":
                continue
            r = {}
            if m.get("compress_seconds") and peer.get("compress_seconds"):
                r["time_svdc_over_llmc"] = m["compress_seconds"] / peer["compress_seconds"]
            if m.get("peak_rss") and peer.get("peak_rss"):
                r["peak_rss_svdc_over_llmc"] = m["peak_rss"] / peer["peak_rss"]
            if m.get("ppl") and peer.get("ppl"):
                r["ppl_svdc_over_llmc"] = m["ppl"] / peer["ppl"]
            ratios[f"{name} / {pname}"] = r
    result.update(models=models, ratios=ratios, total_seconds=time.perf_counter() - t0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peer_llmcompressor.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: {"ppl": v.get("ppl"), "s": v.get("compress_seconds"), "rss": v.get("peak_rss"),
                          "err": v.get("error") or v.get("eval_error")} for k, v in models.items()}, indent=1))
    print(json.dumps(ratios, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
