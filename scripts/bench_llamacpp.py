"""svdc's GGUF export scored by llama.cpp itself, against llama.cpp's own quantizer (issue 26 item 4).

`svdc export --format gguf` writes GPTQ's codes as ggml Q4_0/Q4_1/Q8_0 blocks; its exactness is
tested in Python (gguf-py, transformers' GGUF loader), but only llama.cpp can say whether the
file loads and runs there and how GPTQ's blocks compare with `llama-quantize`'s round-to-nearest
at the same type. This script builds (unless present, under --out):

* dense:   `svdc compress MODEL --method dense` -> `svdc export --format gguf` (BF16 linears);
* svdc:    GPTQ g32 at the grid each type holds (4-bit sym -> Q4_0, 4-bit asym -> Q4_1,
           8-bit sym -> Q8_0) -> `svdc export --format gguf`;
* llama:   `llama-quantize` of the dense GGUF to the same types (no imatrix), with
           `--token-embedding-type` set to what svdc keeps, so only the linears differ;

then runs `llama-perplexity -c CTX --chunks N -t T` on each over the builtin corpus's held-out
text (joined as svdc's eval joins it) and appends one JSON line per file to
benchmarks/llamacpp.jsonl. llama-perplexity scores the second half of each chunk, so its
numbers are not svdc's; compare rows of this file with each other.

Every file is scored as svdc exported it (re-exported with --reexport, e.g. after a writer
change); the llama-quantize files are quantized from svdc's dense export, so the two columns
differ only in the linears' blocks.

    .venv/bin/python scripts/bench_llamacpp.py --llama-bin /work/llamacpp-build/build/bin \
        --out /work/llamacpp-run --chunks 16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SVDC = str(ROOT / ".venv" / "bin" / "svdc")
# gguf type -> (svdc folder, GPTQ bits, sym)
GRIDS = {"Q4_0": ("gptq4", 4, True), "Q4_1": ("gptq4-asym", 4, False), "Q8_0": ("gptq8", 8, True)}
PPL_RE = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")


def run(cmd: list[str], env: dict, log: Path) -> float:
    """Run cmd (no shell), output to log; seconds taken. Raises with the log's error lines."""
    t = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc:
        bad = [ln.strip() for ln in log.read_text(errors="replace").splitlines()
               if re.search(r" E |error|unsupported|Abort", ln)]
        why = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}"
        raise RuntimeError(" | ".join([why, *bad[:3]]))
    return time.time() - t


def svdc_model(args, name: str, gguf: str, method: list[str], env: dict) -> tuple[Path, dict]:
    """Compress to OUT/NAME and export to OUT/GGUF unless done; (gguf path, svdc's eval and times)."""
    out, gg, secs = args.out / name, args.out / gguf, {}
    if not (out / "report.json").is_file():
        secs["svdc_compress_wall_s"] = run(
            [SVDC, "compress", args.model, *method, "--eval", "builtin", "--eval-windows",
             str(args.eval_windows), "--seqlen", str(args.seqlen), "-o", str(out), "--force"],
            env, args.out / f"{name}.compress.log")
    if args.reexport or not gg.is_file():
        secs["svdc_export_wall_s"] = run([SVDC, "export", str(out), "--format", "gguf", "-o", str(gg), "--force"],
                                         env, args.out / f"{name}.export.log")
    times = args.out / f"{name}.times.json"   # keeps the measured seconds for later reruns
    if secs:
        times.write_text(json.dumps({**(json.loads(times.read_text()) if times.is_file() else {}), **secs}))
    secs = json.loads(times.read_text()) if times.is_file() else {}
    rep = json.loads((out / "report.json").read_text())
    ev = next(e for e in rep["eval"] if e["dataset"] == "builtin")
    return gg, {"svdc_ppl": ev["ppl"], "svdc_eval": f"{ev['label']} x{ev['seqlen']}, {ev['dtype']}",
                "svdc_command": rep["command"], **secs}


def tensor_types(path: Path) -> dict[str, int]:
    from gguf import GGUFReader
    return dict(Counter(t.tensor_type.name for t in GGUFReader(str(path)).tensors))


def embd_type(path: Path) -> str:
    from gguf import GGUFReader
    return next(t.tensor_type.name for t in GGUFReader(str(path)).tensors if t.name == "token_embd.weight")


def machine() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    return f"{name}, {os.cpu_count()} cores"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-bin", type=Path, required=True, help="folder with llama-perplexity, llama-quantize")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--types", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--ppl-args", nargs="*", default=["-nr"],
                    help="extra llama-perplexity args; -nr (no repack/extra buffer types) because "
                         "ggml's AMX kernel segfaults on this machine's AMX CPU for Q4_0/Q4_1/Q8_0")
    ap.add_argument("--reexport", action="store_true",
                    help="export (and llama-quantize) again even where the files exist")
    ap.add_argument("--llama-label", default="", help="where llama.cpp came from (e.g. the sdist version)")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "llamacpp.jsonl")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    ppl_bin, quant_bin = str(args.llama_bin / "llama-perplexity"), str(args.llama_bin / "llama-quantize")

    text = args.out / "builtin-test.txt"
    if not text.is_file():
        sys.path.insert(0, str(ROOT))
        from compressor.data import load_split
        text.write_text("\n\n".join(load_split("builtin", "test")), encoding="utf-8")

    ver = subprocess.run([ppl_bin, "--version"], capture_output=True, text=True)
    version = " ".join((ver.stdout + ver.stderr).split())
    if args.llama_label:
        version = f"{args.llama_label}; {version}"

    calib = ["--calib", "builtin", "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen)]
    models = [("dense", "dense (svdc --method dense)", *svdc_model(args, "dense", "dense.gguf",
                                                                  ["--method", "dense", *calib], env))]
    for kind in args.types:
        name, bits, sym = GRIDS[kind]
        models.append((kind, f"svdc GPTQ {bits}-bit g32 {'sym' if sym else 'asym'}", *svdc_model(
            args, name, f"svdc-{kind.lower()}.gguf", ["--method", "gptq", "--bits", str(bits),
                                                       "--group-size", "32", "--set", f"sym={str(sym).lower()}", *calib], env)))
    files = [(kind, source, path, info, None) for kind, source, path, info in models]
    dense = files[0][2]
    embd = embd_type(dense)
    for kind in args.types:
        lq = args.out / f"llama-{kind.lower()}.gguf"
        secs = None
        if args.reexport or not lq.is_file():
            secs = run([quant_bin, "--token-embedding-type", embd, str(dense), str(lq), kind, str(args.threads)],
                       env, args.out / f"llama-{kind.lower()}.quantize.log")
        files.append((kind, f"llama-quantize {kind} of {dense.name} (RTN, no imatrix, token_embd {embd})",
                      lq, {}, secs))

    where = machine()
    with open(args.results, "a") as res:
        for kind, source, path, info, make_s in files:
            cmd = [ppl_bin, "-m", str(path), "-f", str(text), "-c", str(args.ctx), "--chunks",
                   str(args.chunks), "-t", str(args.threads), *args.ppl_args]
            log = args.out / f"{path.stem}.ppl.log"
            try:
                secs = run(cmd, env, log)
                m = PPL_RE.search(log.read_text(errors="replace"))
                ppl, err, error = (float(m[1]), float(m[2]), None) if m else (None, None, "no Final estimate line")
            except RuntimeError as e:
                secs, ppl, err, error = None, None, None, str(e)
            row = {"model": args.model, "file": path.name, "gguf_type": kind, "source": source,
                   "ppl": ppl, "ppl_pm": err, "chunks": args.chunks, "ctx": args.ctx, "threads": args.threads,
                   "tensor_types": tensor_types(path), "size_bytes": path.stat().st_size,
                   "llama_cpp": version, "machine": where, "perplexity_wall_s": secs,
                   "quantize_wall_s": make_s, "command": " ".join(cmd), **info}
            if error:
                row["error"] = error
            res.write(json.dumps(row) + "\n")
            res.flush()
            print(f"{path.name:24} {kind:5} ppl {ppl} +/- {err}  ({secs and round(secs, 1)} s) {error or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
