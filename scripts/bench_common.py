"""Shared pieces of the benchmark scripts: the matrix file, results JSON, machine facts, commands.

Kept apart from ``bench.py`` (orchestration) and ``bench_report.py`` (markdown and plots) so the
report can be regenerated from the JSON alone, without torch doing any work.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

SCHEMA = 1
FLAG_KEYS = ("bits", "rank", "ratio", "group_size", "sparsity", "compensation", "lowrank_bits",
             "outlier_frac", "sparse_frac", "atoms_per_column", "allocation")


# ----------------------------------------------------------------------------- matrix

def load_matrix(path: str | Path) -> dict[str, Any]:
    """The declared matrix: defaults (model, calibration, eval) + rows + comparisons."""
    m = yaml.safe_load(Path(path).read_text())
    if not isinstance(m, dict) or not isinstance(m.get("rows"), list):
        raise SystemExit(f"{path}: a matrix is a mapping with a `rows:` list")
    ids = [r["id"] for r in m["rows"]]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise SystemExit(f"{path}: duplicate row ids {sorted(dup)}")
    for c in m.get("comparisons", []):
        for p in c["pairs"]:
            for rid in [p["method"], *p["baselines"]]:
                if rid not in ids:
                    raise SystemExit(f"{path}: comparison {c['title']!r} names unknown row {rid!r}")
    m.setdefault("model", "smollm2-135m")
    m.setdefault("device", "cpu")
    m.setdefault("dtype", "float32")
    m.setdefault("calibration", {"dataset": "builtin", "nsamples": 16, "seqlen": 512, "seed": 0})
    m.setdefault("eval", {"dataset": "builtin", "seqlen": 512, "max_windows": None})
    return m


def row_by_id(matrix: dict[str, Any], rid: str) -> dict[str, Any]:
    for r in matrix["rows"]:
        if r["id"] == rid:
            return r
    raise SystemExit(f"no row {rid!r} in the matrix (ids: {', '.join(r['id'] for r in matrix['rows'])})")


def grad_cache_file(out_root: Path, needs: set[str], matrix: dict[str, Any]) -> Path:
    """One gradient-statistics file per statistic set and calibration, shared by rows."""
    c = matrix["calibration"]
    tag = "-".join(sorted(needs))
    return out_root / f"grad-cache-{tag}-{c['nsamples']}x{c['seqlen']}-s{c['seed']}.safetensors"


def recipe_dict(matrix: dict[str, Any], row: dict[str, Any], output: Path, device: str,
                fisher_file: Path | None) -> dict[str, Any]:
    """The svdc recipe one row amounts to (validated later by compressor.recipe.parse_recipe)."""
    ev = matrix["eval"]
    d: dict[str, Any] = {
        "model": matrix["model"], "device": device, "dtype": matrix["dtype"],
        "calibration": dict(matrix["calibration"]),
        "stages": [dict(s) for s in row["stages"]],
        "output": str(output),
        "eval": {"datasets": [ev["dataset"]], "seqlen": ev["seqlen"], "max_windows": ev.get("max_windows")},
    }
    if fisher_file is not None:
        d["gradients"] = {"fisher_file": str(fisher_file)}
    if "storage_dtype" in row:                   # else auto: SmolLM2's own (float32)
        d["storage_dtype"] = row["storage_dtype"]
    return d


# ----------------------------------------------------------------------------- results

def load_results(path: Path) -> dict[str, Any]:
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("schema") == SCHEMA:
            return data
    return {"schema": SCHEMA, "rows": {}}


def merge_row(path: Path, row: dict[str, Any]) -> None:
    """Re-read, replace this row by id, write atomically: rows can be re-run one at a time."""
    data = load_results(path)
    data["rows"][row["id"]] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- machine

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts(device: str = "cpu") -> dict[str, Any]:
    """Cores, CPU model, torch threads, GPU, and the load average (this machine is shared)."""
    import torch
    out: dict[str, Any] = {"cpu_cores": os.cpu_count() or 0, "cpu_model": cpu_model(),
                           "torch_threads": torch.get_num_threads(), "device": device,
                           "platform": platform.platform()}
    try:
        out["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    try:
        out["mem_total_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def library_versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for pkg in ("svdc", "torch", "transformers", "safetensors", "scipy", "pydantic", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def peak_rss_bytes() -> int:
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss * (1 if sys.platform == "darwin" else 1024))


# ----------------------------------------------------------------------------- commands

def _defaults(method: str) -> dict[str, Any]:
    from compressor.core.registry import get_method
    return get_method(method).Config().model_dump(mode="json")


def _stage_flags(stages: list[dict[str, Any]], declared: list[dict[str, Any]]
                 ) -> tuple[str, str | None, dict[str, Any]]:
    """(method, base, params): the flags `svdc compress` would need for these stages; keys the
    row declared (its budget) are always spelled out, other keys only where not the default."""
    from compressor.core.registry import get_method
    if len(stages) == 1:
        method, base = stages[0]["method"], None
    elif len(stages) == 2 and get_method(stages[1]["method"]).uses_previous:
        method, base = stages[1]["method"], stages[0]["method"]
    else:
        raise ValueError("not expressible as flags")
    params: dict[str, Any] = {}
    for s, d in zip(stages, declared):
        dflt = _defaults(s["method"])
        for k, v in s.items():
            if k != "method" and (dflt.get(k) != v or k in d):
                if k in params and params[k] != v:
                    raise ValueError(f"flag {k} differs between stages")
                params[k] = v
    return method, base, params


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ",".join(_fmt_value(x) for x in v) + "]"
    return str(v)


def svdc_command(matrix: dict[str, Any], row: dict[str, Any], resolved: list[dict[str, Any]],
                 output: str, device: str, fisher_file: str | None) -> str:
    """The `svdc compress ...` line equivalent to this row, checked by a round trip through
    the CLI's own flag parser; falls back to `svdc run <recipe>` when flags cannot say it."""
    from compressor.recipe import parse_recipe, stages_from_flags
    c, ev = matrix["calibration"], matrix["eval"]
    try:
        method, base, params = _stage_flags(resolved, row["stages"])
        again = [cfg.model_dump(mode="json") for cfg in
                 parse_recipe({"stages": stages_from_flags(method, base, dict(params))}).stages]
        if again != resolved or (ev["seqlen"] or c["seqlen"]) != c["seqlen"]:
            raise ValueError("round trip differs")
    except Exception:  # noqa: BLE001 - anything the flags cannot express goes through a recipe
        return f"svdc run benchmarks/recipes/{row['id']}.yaml --device {device} --force"
    argv = ["svdc", "compress", matrix["model"], "--method", method]
    if base:
        argv += ["--base", base]
    for k, v in params.items():
        if k in FLAG_KEYS:
            argv += ["--" + k.replace("_", "-"), _fmt_value(v)]
        else:
            argv += ["--set", f"{k}={_fmt_value(v)}"]
    argv += ["--calib", c["dataset"], "--nsamples", str(c["nsamples"]), "--seqlen", str(c["seqlen"]),
             "--seed", str(c["seed"]), "--device", device, "--dtype", matrix["dtype"],
             "--eval", ev["dataset"]]
    if "storage_dtype" in row:
        argv += ["--storage-dtype", row["storage_dtype"]]
    if ev.get("max_windows"):
        argv += ["--eval-windows", str(ev["max_windows"])]
    if fisher_file:
        argv += ["--fisher-file", fisher_file]
    argv += ["-o", output, "--force"]
    return " ".join(shlex.quote(a) for a in argv)


def dense_command(matrix: dict[str, Any], device: str) -> str:
    ev = matrix["eval"]
    argv = ["svdc", "eval", matrix["model"], "--dataset", ev["dataset"], "--seqlen", str(ev["seqlen"]),
            "--device", device, "--dtype", matrix["dtype"]]
    if ev.get("max_windows"):
        argv += ["--max-windows", str(ev["max_windows"])]
    return " ".join(shlex.quote(a) for a in argv)


def rel(path: Path) -> str:
    """A path relative to the repository when inside it (commands stay copy-pasteable)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
