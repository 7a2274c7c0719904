"""Per-layer weight streaming: peak RSS well below the model (the equality of streamed and
whole-model runs, method by method, is tests/core/test_engine_matrix.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import compressor
from compressor.parts import CompressedLinear


ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from synthetic_llama import make_synthetic  # noqa: E402


def _data(model_dir, out, stages, **kw):
    return {"model": str(model_dir), "stages": stages, "output": str(out),
            "calibration": {"dataset": "builtin", "nsamples": 4, "seqlen": 64, "seed": 0}, **kw}


_CHILD = r"""
import json, sys
import torch, transformers, compressor.api, compressor.phases  # imports before the baseline
from compressor.recipe import parse_recipe
from compressor.api import compress

def hwm():
    # this address space's peak resident size; ru_maxrss would report the pytest process's
    # (Linux carries the high-water mark across fork + exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

base = hwm()
args = json.loads(sys.argv[1])
if "eval" in args:   # svdc eval --stream's path: layer-major perplexity of a streamed model
    import compressor
    from transformers import AutoTokenizer
    from compressor.evaluate import evaluate
    model = compressor.load(args["eval"], stream=True)
    res = evaluate(model, AutoTokenizer.from_pretrained(args["eval"]), "builtin", 32, max_windows=2)
    out = {"ppl": res["ppl"]}
else:
    rep = compress(parse_recipe(args), stream=True).report
    out = {"bytes_after": rep["totals"]["model"]["bytes_after"]}
print(json.dumps({"base": base, "peak": hwm(), **out}))
"""


def _child_peak(args: dict) -> dict:
    """Run _CHILD in a fresh process; its peak resident size (VmHWM) and baseline."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True,
                       text=True, env=env, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_peak_rss_is_well_below_the_model_size(tiny_model_dir, tmp_path):
    # 2.04 GB of float32 weights: 216 layers of hidden 512 / FFN 1024 (2.36 M params, 9.4 MB
    # each; narrow, because the report's float64 output error costs out x in^2 per matrix and
    # sets the test's time), written 16 layers a shard: neither the test nor a child holds it
    from transformers import AutoTokenizer
    size = make_synthetic(tmp_path / "big", AutoTokenizer.from_pretrained(tiny_model_dir),
                          hidden=512, inter=1024, layers=216, shard_layers=16)
    assert size > 2.0e9
    data = _data(tmp_path / "big", tmp_path / "out", [{"method": "rtn", "bits": 4, "group_size": 128}])
    data["calibration"] = {"dataset": "builtin", "nsamples": 2, "seqlen": 32, "seed": 0}
    comp = _child_peak(data)
    ev = _child_peak({"eval": str(tmp_path / "big")})
    # peak = imports (~0.29 GB) + runtime (~0.17 GB: transformers' modeling code, tokenizer,
    # calibration text) + embeddings and head + one layer, its Grams and the method's
    # scratch; it does not grow with the number of layers. Measured on the loaded 2-core box:
    # compress 558 MB, eval 533 MB, ~3 min in all (BENCHMARKS.md, Streaming).
    for what, r in (("compress", comp), ("eval", ev)):
        print(f"\nstreaming {what}: model {size / 1e6:.0f} MB, peak RSS {r['peak'] / 1e6:.0f} MB "
              f"({r['peak'] / size:.2f} of it; after imports {r['base'] / 1e6:.0f} MB)")
        assert r["peak"] < 0.4 * size, f"{what}: peak {r['peak'] / 1e6:.0f} MB for {size / 1e6:.0f} MB"
    assert math.isfinite(ev["ppl"])
    m = compressor.load(tmp_path / "out", stream=True)
    assert sum(isinstance(x, CompressedLinear) for x in m.modules()) == 216 * 7
