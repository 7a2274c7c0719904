"""Where the resident memory of `compress --stream` goes: samples this process's RSS every
2 ms and reports the highest value seen in each step (reading a layer, calibrating it,
compressing each linear of the first two layers, writing and freeing it), with the RSS each
step leaves behind. The numbers of BENCHMARKS.md (Streaming: peak host RSS vs model size).

    python scripts/stream_rss_probe.py MODEL_DIR --method rtn [--set bits=4 --set group_size=128]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time

import torch  # noqa: F401  (imported before the baseline, like the CLI)
import transformers  # noqa: F401

import compressor.core.pipeline as pipeline
import compressor.core.sources as sources
import compressor.core.walk as walk
import compressor.phases as phases

_phase, _peaks, _after = [""], {}, {}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _hwm() -> int:
    """Peak resident size of this address space (ru_maxrss would include a parent's: Linux
    carries it across fork + exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _sample() -> None:
    while True:
        k, r = _phase[0], _rss()
        if _phase[0] == k:   # not a reading that straddles a change of step
            _peaks[k] = max(_peaks.get(k, 0), r)
        time.sleep(0.002)


def _wrap(owner, name: str, label) -> None:
    f = getattr(owner, name)

    def g(*a, **kw):
        old, _phase[0] = _phase[0], label(a)
        try:
            return f(*a, **kw)
        finally:
            _after[_phase[0]] = _rss()
            _phase[0] = old
    setattr(owner, name, g)


def _linear_label(a) -> str:
    i = int(a[0].split("layers.")[1].split(".")[0])
    return f"layer {i} compress {a[0].split('.', 3)[-1]}" if i < 2 else "later layers: compress"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--method", default="rtn")
    ap.add_argument("--set", action="append", default=[], help="key=value stage option")
    a = ap.parse_args()
    stage = {"method": a.method, **{k: json.loads(v) if v[:1].isdigit() else v
                                    for k, v in (s.split("=", 1) for s in a.set)}}
    _wrap(sources.StreamedLayers, "load",
          lambda x: f"layer {x[1]} read" if x[1] < 2 else "later layers: read")
    _wrap(sources.StreamedLayers, "release",
          lambda x: f"layer {x[1]} checkpoint+free" if x[1] < 2 else "later layers: checkpoint+free")
    _wrap(walk, "capture_inputs", lambda x: "capture the layer-0 inputs")
    _wrap(pipeline, "compress_layer", lambda x: "a layer's Grams and compressed linears, between steps")
    _wrap(pipeline, "calibrate_groups", lambda x: "calibrate (Grams)")
    _wrap(walk, "propagate", lambda x: "propagate")
    _wrap(phases, "save_compressed", lambda x: "write the output (layers from checkpoints, embeddings, head, config)")
    _wrap(pipeline, "compress_linear", _linear_label)
    from compressor.api import compress
    from compressor.recipe import parse_recipe
    base = _rss()
    _phase[0] = "setup (config, tokenizer, calibration text, skeleton, embeddings, head)"
    threading.Thread(target=_sample, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        compress(parse_recipe({
            "model": a.model, "output": f"{tmp}/out", "stages": [stage],
            "calibration": {"dataset": "builtin", "nsamples": 2, "seqlen": 32, "seed": 0}}),
            stream=True)
    peak = _hwm()
    print(f"{'step':64s} {'peak MB':>8s} {'after MB':>8s}")
    print(f"{'after imports (baseline)':64s} {base / 1e6:8.0f}")
    for k, v in _peaks.items():
        after = f"{_after[k] / 1e6:8.0f}" if k in _after else ""
        print(f"{k:64s} {v / 1e6:8.0f} {after}")
    print(f"{'peak RSS of the whole run (VmHWM)':64s} {peak / 1e6:8.0f}")


if __name__ == "__main__":
    main()
