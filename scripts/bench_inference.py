#!/usr/bin/env python
"""Tokens per second of compressed SmolLM2 vs dense, one row per layer type.

    python scripts/bench_inference.py [--threads 1] [--device cpu]

Loads the compressed checkpoints the benchmark rows wrote (``compressor.load``) and times a
prefill of 512 tokens and per-token decoding with the KV cache (batch 1, median of repeats), so
a reader sees whether a format is faster or only smaller. Layer types: lowrank, quant,
quant+lowrank, nf+lowrank, quant+sparse, sparse (magnitude pruning, built here by the prune
method: it needs no calibration), dictionary (CoSpaDi) and channels (LOST) when their rows exist.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, load_results, machine_facts, rel  # noqa: E402

# (layer type, benchmark row whose output is loaded) in the order of the table
LAYER_TYPES = [("dense", None), ("lowrank", "wsvd-r0.2"), ("quant", "gptq-w3"),
               ("quant+lowrank", "gptq-w3+eora-r32"), ("nf+lowrank", "lqlora-r8-b3.2"),
               ("quant+sparse", "gwq-w3-o1"), ("sparse", "prune-magnitude-0.5 (built here)"),
               ("dictionary", "cospadi-r0.2"), ("channels", "lost-r0.2")]


def param_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def part_types(model) -> str:
    from collections import Counter

    from compressor.parts.base import CompressedLinear
    c = Counter(" + ".join(p.type_name for p in m.parts) for m in model.modules() if isinstance(m, CompressedLinear))
    return ", ".join(f"{k} ×{v}" for k, v in c.most_common()) or "nn.Linear"


def build_sparse(model_spec: str, sparsity: float):
    """Dense SmolLM2 with every target linear magnitude-pruned into a SparsePart (what
    `svdc compress --method prune --sparsity S` writes; magnitude scores need no data)."""
    import torch

    from compressor.core.layer_io import set_submodule
    from compressor.models import decoder_layers, load_model, target_linears
    from compressor.parts.base import CompressedLinear
    from compressor.parts.sparse import SparsePart
    from compressor.primitives.masks import magnitude_mask
    model, tok, _ = load_model(model_spec, dtype="float32")
    _, layers = decoder_layers(model)
    for layer in layers:
        for rel_name, lin in target_linears(layer).items():
            w = lin.weight.detach().float()
            part = SparsePart.from_dense(w, magnitude_mask(w, sparsity), torch.float32)
            set_submodule(layer, rel_name, CompressedLinear(w.shape[0], w.shape[1], [part], lin.bias))
    return model, tok


def measure(model, ids, decode_tokens: int, repeats: int, device) -> dict[str, float]:
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    pre, dec = [], []
    with torch.inference_mode():
        model(input_ids=ids[:, :16], use_cache=True)  # warm-up
        for _ in range(repeats):
            sync()
            t = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            sync()
            pre.append(time.perf_counter() - t)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(decode_tokens):
            sync()
            t = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            sync()
            dec.append(time.perf_counter() - t)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return {"prefill_s": statistics.median(pre), "decode_s_per_token": statistics.median(dec),
            "prefill_tok_s": ids.shape[1] / statistics.median(pre), "decode_tok_s": 1.0 / statistics.median(dec)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results.json"))
    p.add_argument("--out", default=str(ROOT / "benchmarks"))
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--decode", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sparsity", type=float, default=0.5)
    a = p.parse_args()
    import torch

    import compressor
    from compressor.data import eval_windows
    from compressor.models import load_model
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    rows = load_results(Path(a.results))["rows"]
    dense, tok, _ = load_model(a.model, dtype="float32")
    ids = eval_windows(tok, "builtin", a.prefill, max_windows=1)[0].to(device)
    out: dict[str, Any] = {"device": str(device), "machine": machine_facts(a.device), "prefill_tokens": a.prefill,
                           "decode_tokens": a.decode, "repeats": a.repeats, "rows": [],
                           "command": "python scripts/bench_inference.py " + " ".join(sys.argv[1:])}
    base = None
    for ltype, rid in LAYER_TYPES:
        rec: dict[str, Any] = {"layer_type": ltype, "row": rid or "dense"}
        try:
            if ltype == "dense":
                model = dense
            elif ltype == "sparse":
                model, _ = build_sparse(a.model, a.sparsity)
            else:
                r = rows.get(rid)
                if not r or r.get("status") != "ok" or not Path(ROOT / r["output_dir"]).is_dir():
                    rec.update(status="not run", error=(r or {}).get("error") or f"row {rid} has no output")
                    out["rows"].append(rec)
                    continue
                model = compressor.load(ROOT / r["output_dir"])
            model.to(device).eval()
            rec.update(parts=part_types(model), param_bytes=param_bytes(model))
            rec.update(measure(model, ids, a.decode, a.repeats, device))
            rec["status"] = "ok"
            if ltype == "dense":
                base = rec
            elif base:
                rec["prefill_vs_dense"] = rec["prefill_tok_s"] / base["prefill_tok_s"]
                rec["decode_vs_dense"] = rec["decode_tok_s"] / base["decode_tok_s"]
                rec["bytes_vs_dense"] = rec["param_bytes"] / base["param_bytes"]
            if model is not dense:
                del model
        except Exception as e:  # noqa: BLE001 - recorded per layer type
            rec.update(status="error", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        print(f"[inference] {ltype}: {rec.get('status')} prefill {rec.get('prefill_tok_s', 0):.1f} tok/s "
              f"decode {rec.get('decode_tok_s', 0):.2f} tok/s {rec.get('error') or ''}", flush=True)
        out["rows"].append(rec)
    verdicts = []
    for r in out["rows"][1:]:
        if r.get("status") != "ok":
            continue
        faster = [w for w, k in (("prefill", "prefill_vs_dense"), ("decode", "decode_vs_dense")) if r.get(k, 0) > 1.05]
        slower = [w for w, k in (("prefill", "prefill_vs_dense"), ("decode", "decode_vs_dense")) if r.get(k, 1) < 0.95]
        size = f"{r['bytes_vs_dense']:.2f}× the dense bytes in memory"
        if faster and not slower:
            verdicts.append(f"{r['layer_type']}: faster ({', '.join(faster)}) and {size}.")
        elif slower and not faster:
            verdicts.append(f"{r['layer_type']}: only smaller, not faster — slower at {', '.join(slower)} ({size}).")
        else:
            verdicts.append(f"{r['layer_type']}: mixed (faster: {', '.join(faster) or 'none'}; slower: "
                            f"{', '.join(slower) or 'none'}; {size}).")
    out["verdicts"] = verdicts
    f = Path(a.out) / f"inference_{device.type}.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(out, indent=1, default=str))
    print(f"[inference] wrote {rel(f)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
