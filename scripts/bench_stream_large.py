"""Peak host memory of streamed runs against model size: builds a random-weight Llama in
bfloat16 (shard by shard, never whole in memory), runs ``svdc compress MODEL ... --stream``
once per ``--run`` (default: RTN 4-bit, data-free) in a fresh process, records its wall time
and peak RSS (VmHWM of that process), and deletes the model and the outputs.

    # larger than this machine's RAM (26.8 GB), streamed and data-free
    python scripts/bench_stream_large.py --work /tmp/big --hidden 5120 --inter 13824 --layers 46
    # 2.3 GB, the methods that calibrate, take gradients or train
    python scripts/bench_stream_large.py --work /tmp/mid --hidden 2048 --inter 5632 --layers 24 \
        --run "--method gptq --bits 4 --calib builtin --nsamples 8 --seqlen 256" ...

Writes one JSON line per run to benchmarks/stream_large.jsonl (the model's bytes, the
command, wall seconds, peak RSS, the report's stage seconds, the commit).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--hidden", type=int, default=5120)
    ap.add_argument("--inter", type=int, default=13824)
    ap.add_argument("--layers", type=int, default=46)
    ap.add_argument("--run", action="append", default=None,
                    help="compress arguments after MODEL (repeatable; default: RTN 4-bit g128)")
    ap.add_argument("--keep", action="store_true", help="keep the model (outputs are deleted after each run)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "stream_large.jsonl")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "scripts"))
    from synthetic_llama import make_synthetic
    from tests.conftest import _train_tokenizer
    model = a.work / "model"
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    tok = _train_tokenizer((ROOT / "calib_data" / "wiki_calib.txt").read_text()[:200_000])
    t = time.perf_counter()
    size = make_synthetic(model, tok, a.hidden, a.inter, a.layers, shard_layers=2,
                          dtype=torch.bfloat16)
    build_s = time.perf_counter() - t
    print(f"built {size / 1e9:.2f} GB of bfloat16 weights in {build_s:.0f} s", flush=True)
    for k, args in enumerate(a.run or ["--method rtn --bits 4 --group-size 128"]):
        row = _measure(model, a.work / f"out-{k}", args.split(), size)
        row.update({"hidden": a.hidden, "inter": a.inter, "layers": a.layers,
                    "build_s": round(build_s, 1)})
        print(json.dumps(row), flush=True)
        with a.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        shutil.rmtree(a.work / f"out-{k}", ignore_errors=True)
    if not a.keep:
        shutil.rmtree(a.work, ignore_errors=True)


def _measure(model: Path, out: Path, args: list[str], size: int) -> dict:
    """One ``svdc compress MODEL ARGS --stream`` in a fresh process: wall time, VmHWM."""
    cmd = ["compress", str(model), *args, "--stream", "-o", str(out)]
    probe = ("import runpy, sys; sys.argv = ['svdc'] + sys.argv[1:]; "
             "import atexit; atexit.register(lambda: print('VmHWM', [l for l in "
             "open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1], "
             "file=sys.stderr)); runpy.run_module('compressor', run_name='__main__')")
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"compress failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    hwm = [ln for ln in p.stderr.splitlines() if ln.startswith("VmHWM")]
    # with --nproc the ranks are children of this launcher: its own VmHWM is not theirs
    peak = int(hwm[-1].split()[1]) * 1024 if hwm and "--nproc" not in args else None
    rep = json.loads((out / "report.json").read_text())
    return {"model_bytes": size, "dtype": "bfloat16", "command": " ".join(cmd),
            "wall_s": round(wall, 1), "peak_rss_bytes": peak,
            "peak_rss_over_model": None if peak is None else round(peak / size, 4),
            "calibration_ran": rep["calibration"]["ran"],
            "gradients": rep.get("gradients"), "heal": bool(rep.get("heal")),
            "output_bytes": rep["totals"]["model"]["bytes_after"],
            "stage_seconds": rep["stage_seconds"], "machine": rep["machine"],
            "threads": os.environ.get("OMP_NUM_THREADS"),
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                     capture_output=True, text=True).stdout.strip()}


if __name__ == "__main__":
    main()
