"""Runs INSIDE the llmcompressor venv (see peer_llmcompressor.py): GPTQ with llmcompressor on
the exact calibration windows svdc used, then a dense (dequantized) checkpoint plain
transformers loads, plus the compressed-tensors checkpoint for its size on disk.

Imports nothing from svdc: that venv has llmcompressor's pins (its own transformers), not ours.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

QPARAM_SUFFIXES = ("weight_scale", "weight_zero_point", "weight_g_idx", "weight_global_scale")


def peak_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--windows", required=True, help="safetensors with input_ids (n, seqlen)")
    p.add_argument("--bits", type=int, required=True)
    p.add_argument("--group-size", type=int, required=True)
    p.add_argument("--dense-out", required=True)
    p.add_argument("--compressed-out", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--actorder", choices=["none", "static", "group", "weight"], default="none",
                   help="llm-compressor's actorder (its library default is static)")
    a = p.parse_args()
    out: dict = {"status": "error"}
    t_all = time.perf_counter()
    try:
        import torch
        if a.threads:
            torch.set_num_threads(a.threads)
        from safetensors.torch import load_file
        t = time.perf_counter()
        import importlib.metadata as md

        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import GPTQModifier
        from transformers import AutoModelForCausalLM, AutoTokenizer
        out["import_seconds"] = time.perf_counter() - t
        out["versions"] = {k: md.version(k) for k in ("llmcompressor", "compressed-tensors", "torch",
                                                       "transformers", "datasets")}
        ids = load_file(a.windows)["input_ids"]
        n, seqlen = ids.shape
        ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
        t = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(a.model)
        out["load_seconds"] = time.perf_counter() - t
        scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
            num_bits=a.bits, type="int", symmetric=False, strategy="group", group_size=a.group_size))
        # Same knobs as svdc's gptq: damping 1% of the mean diagonal, blocks of 128 columns,
        # lm_head left alone; activation ordering as asked (None = off).
        actorder = None if a.actorder == "none" else a.actorder
        out["recipe"] = {"bits": a.bits, "group_size": a.group_size, "symmetric": False,
                         "block_size": 128, "dampening_frac": 0.01, "actorder": actorder,
                         "ignore": ["lm_head"], "nsamples": int(n), "seqlen": int(seqlen)}
        for bypass in (False, True):
            recipe = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"], block_size=128,
                                  dampening_frac=0.01, actorder=actorder, bypass_divisibility_checks=bypass)
            t = time.perf_counter()
            try:
                oneshot(model=model, tokenizer=tok, dataset=ds, recipe=recipe, max_seq_length=int(seqlen),
                        num_calibration_samples=int(n), shuffle_calibration_samples=False)
            except ValueError as e:
                # llmcompressor refuses groups that do not divide the columns (SmolLM2's 576
                # with groups of 128) unless told to bypass; svdc uses a ragged last group.
                if bypass or "divisible" not in str(e):
                    raise
                out["divisibility_error"] = str(e).strip().splitlines()[0]
                model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
                continue
            out["oneshot_seconds"] = time.perf_counter() - t
            out["recipe"]["bypass_divisibility_checks"] = bypass
            break
        out["peak_rss_after_oneshot_bytes"] = peak_rss()
        # Dense copy: the quantized modules hold GPTQ's dequantized weights; keep only the
        # keys a plain model has (drop scales / zero points) and save with plain transformers.
        sd = model.state_dict()
        nq = sum(1 for k in sd if k.endswith("weight_scale"))
        out["quantized_modules"] = nq
        fresh = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
        keys = fresh.state_dict().keys()
        fresh.load_state_dict({k: sd[k].detach().to(torch.float32) for k in keys}, strict=True)
        fresh.save_pretrained(a.dense_out)
        tok.save_pretrained(a.dense_out)
        out["dense_dir"] = a.dense_out
        # On-grid check: number of distinct values per row group of one quantized weight.
        for name, mod in model.named_modules():
            if hasattr(mod, "weight_scale"):
                w = mod.weight.detach().float()
                g = w[:, : a.group_size]
                out["grid_check"] = {"module": name, "distinct_in_first_group_row0": int(g[0].unique().numel()),
                                     "levels": 2 ** a.bits}
                break
        try:
            t = time.perf_counter()
            model.save_pretrained(a.compressed_out, save_compressed=True)
            out["compressed_save_seconds"] = time.perf_counter() - t
            out["compressed_bytes"] = folder_bytes(Path(a.compressed_out))
            cfg = json.loads((Path(a.compressed_out) / "config.json").read_text())
            out["compressed_format"] = cfg.get("quantization_config", {}).get("format")
        except Exception as e:  # noqa: BLE001 - the size is a side fact; record why it is missing
            out["compressed_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        out["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - the driver records the exact error
        import traceback
        traceback.print_exc()
        out["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    out["peak_rss_bytes"] = peak_rss()
    out["process_seconds"] = time.perf_counter() - t_all
    Path(a.json).write_text(json.dumps(out, indent=1, default=str))
    return 0 if out["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
