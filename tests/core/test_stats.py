"""Gram / mean|x| hooks: exact against brute force, shared only between linears fed the same x."""

from __future__ import annotations

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaRotaryEmbedding,
)

from compressor.core.stats import LayerStatsCollector
from compressor.models import target_linears


def test_grams_match_brute_force_and_sharing_is_by_identity():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2)
    layer = LlamaDecoderLayer(cfg, 0).eval()
    rope = LlamaRotaryEmbedding(cfg)
    targets = target_linears(layer)
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in targets}
    handles = [m.register_forward_hook(lambda mod, a, o, n=n: seen[n].append(a[0].detach().clone()))
               for n, m in targets.items()]
    xs = [torch.randn(1, 10, 32) for _ in range(3)]
    with LayerStatsCollector(targets, want_gram=True, want_absmean=True) as c:
        for x in xs:
            c.new_call()
            pos = torch.arange(10)[None]
            layer(x, position_embeddings=rope(x, pos), attention_mask=None, position_ids=pos)
    for h in handles:
        h.remove()
    stats = c.stats()
    for name, inputs in seen.items():
        X = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs])
        torch.testing.assert_close(stats[name].gram, X.T @ X, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats[name].act_absmean, X.abs().mean(0), rtol=1e-5, atol=1e-6)
        assert stats[name].ntokens == 30
    assert stats["self_attn.q_proj"].gram is stats["self_attn.k_proj"].gram
    assert stats["mlp.gate_proj"].gram is stats["mlp.up_proj"].gram
    assert stats["self_attn.o_proj"].gram is not stats["self_attn.q_proj"].gram
    assert stats["mlp.down_proj"].gram is not stats["mlp.gate_proj"].gram
