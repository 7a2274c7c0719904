"""A random-weight Llama checkpoint written shard by shard, never whole in memory: the model
the streaming RSS test and benchmark measure (tests/core/test_streaming.py, BENCHMARKS.md).

    python scripts/synthetic_llama.py /tmp/synth --hidden 512 --inter 1024 --layers 216
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def make_synthetic(folder: Path, tokenizer: Any, hidden: int, inter: int, layers: int,
                   shard_layers: int = 4, dtype: torch.dtype = torch.float32) -> int:
    """Write the model (``dtype``, GQA with half as many KV heads, untied head) with
    ``tokenizer``'s vocabulary into ``folder``; returns the bytes of its weights."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig
    folder.mkdir(parents=True)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=hidden // 64,
                      num_key_value_heads=hidden // 128, max_position_embeddings=512,
                      tie_word_embeddings=False, dtype=str(dtype).removeprefix("torch."))
    cfg.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    g = torch.Generator().manual_seed(0)
    kv = hidden // 2
    shapes = {"self_attn.q_proj.weight": (hidden, hidden), "self_attn.k_proj.weight": (kv, hidden),
              "self_attn.v_proj.weight": (kv, hidden), "self_attn.o_proj.weight": (hidden, hidden),
              "mlp.gate_proj.weight": (inter, hidden), "mlp.up_proj.weight": (inter, hidden),
              "mlp.down_proj.weight": (hidden, inter)}
    groups = [list(range(i, min(i + shard_layers, layers))) for i in range(0, layers, shard_layers)]
    n_files = len(groups) + 1
    weight_map, total = {}, 0
    for f, group in enumerate(groups):
        tensors = {}
        for i in group:
            p = f"model.layers.{i}."
            for k, s in shapes.items():
                tensors[p + k] = (torch.randn(s, generator=g) * s[1] ** -0.5).to(dtype)
            tensors[p + "input_layernorm.weight"] = torch.ones(hidden, dtype=dtype)
            tensors[p + "post_attention_layernorm.weight"] = torch.ones(hidden, dtype=dtype)
        name = f"model-{f + 1:05d}-of-{n_files:05d}.safetensors"
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    rest = {"model.embed_tokens.weight": torch.randn(len(tokenizer), hidden, generator=g) * 0.02,
            "model.norm.weight": torch.ones(hidden),
            "lm_head.weight": torch.randn(len(tokenizer), hidden, generator=g) * 0.02}
    rest = {k: v.to(dtype) for k, v in rest.items()}
    name = f"model-{n_files:05d}-of-{n_files:05d}.safetensors"
    save_file(rest, str(folder / name), metadata={"format": "pt"})
    weight_map.update({k: name for k in rest})
    total += sum(t.numel() * t.element_size() for t in rest.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--inter", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=216)
    ap.add_argument("--shard-layers", type=int, default=16)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.conftest import _train_tokenizer   # the test fixture's tokenizer (vocab 387)
    tok = _train_tokenizer((ROOT / "calib_data" / "wiki_calib.txt").read_text()[:200_000])
    size = make_synthetic(a.out, tok, a.hidden, a.inter, a.layers, a.shard_layers,
                          getattr(torch, a.dtype))
    print(f"{a.out}: {size / 1e9:.3f} GB of {a.dtype} weights")


if __name__ == "__main__":
    main()
