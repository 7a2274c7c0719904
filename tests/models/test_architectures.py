"""The sequential pipeline on other architectures: Gemma 3 (sliding + global attention layers,
different masks per layer) and Qwen2 (biased q/k/v). Compressed in-memory == reloaded, and a
zero-compression stage (svd at full useful rank on a tiny model) stays close to the original."""

from __future__ import annotations

import pytest
import torch

import compressor
from compressor.api import compress
from compressor.recipe import parse_recipe


def _save(tmp_path, model, tok_dir):
    from transformers import AutoTokenizer
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(tmp_path)
    return tmp_path


def _gemma3(vocab):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    cfg = Gemma3TextConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=16,
                           max_position_embeddings=256, layer_types=["sliding_attention", "sliding_attention",
                                                                     "full_attention"])
    return Gemma3ForCausalLM(cfg)


def _qwen2(vocab):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return Qwen2ForCausalLM(cfg)


@pytest.mark.parametrize("build", [_gemma3, _qwen2], ids=["gemma3", "qwen2"])
def test_compress_and_reload(build, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer
    vocab = len(AutoTokenizer.from_pretrained(tiny_model_dir))
    torch.manual_seed(0)
    model_dir = _save(tmp_path / "m", build(vocab), tiny_model_dir)
    recipe = parse_recipe({"model": str(model_dir), "output": str(tmp_path / "out"),
                           "stages": [{"method": "rtn", "bits": 8, "group_size": 32}],
                           "calibration": {"nsamples": 2, "seqlen": 48},
                           "output_errors": True})   # RTN alone would run no forward pass
    res = compress(recipe, keep_model=True)
    n_layers = res.model.config.num_hidden_layers
    assert len(res.report["modules"]) == 7 * n_layers
    # 8-bit RTN is near-lossless on every layer, so each layer saw sensible inputs and masks
    assert max(r["output_rel_err"] for r in res.report["modules"]) < 0.02
    ids = torch.randint(3, vocab, (1, 40))
    with torch.no_grad():
        a = res.model(ids).logits
        b = compressor.load(res.output)(ids).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize("build", [_gemma3, _qwen2], ids=["gemma3", "qwen2"])
def test_layer_by_layer_replay_equals_the_full_forward(build):
    """Captured layer-0 inputs + each layer's own kwargs (masks, rotary) reproduce the model's
    hidden states exactly: the sequential pass feeds every layer what the model would."""
    from compressor.core.layer_io import capture_inputs, run_layer
    from compressor.models import decoder_layers
    torch.manual_seed(0)
    model = build(200).eval()
    ids = torch.randint(3, 200, (2, 40))
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True).hidden_states
    _, layers = decoder_layers(model)
    hidden, kwargs = capture_inputs(model, layers, ids, torch.device("cpu"))
    for i, layer in enumerate(layers):
        for w in range(ids.shape[0]):
            torch.testing.assert_close(hidden[w][0], ref[i][w], rtol=1e-5, atol=1e-5)
        hidden = [run_layer(layer, h, kwargs[i]) for h in hidden]
