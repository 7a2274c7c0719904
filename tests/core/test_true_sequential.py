"""True-sequential: each group of a layer's linears is calibrated on the outputs of the
groups compressed before it (o_proj's Gram from the quantized q/k/v)."""

from __future__ import annotations

import copy

import pytest
import torch

from compressor.core.layer_io import capture_inputs, run_layer
from compressor.core.pipeline import compress_layer
from compressor.core.stages import Stage
from compressor.core.stats import LayerStatsCollector
from compressor.methods.gptq import GPTQ
from compressor.methods.gptq.config import GPTQConfig
from compressor.models import linear_kind, target_linears


class _SpyGPTQ(GPTQ):
    """GPTQ that records the Gram each target was compressed with."""

    def __init__(self):
        super().__init__()
        self.grams: dict[str, torch.Tensor] = {}

    def compress(self, target, cfg, previous=None):
        self.grams[target.name.rsplit(".", 2)[-2] + "." + target.name.rsplit(".", 1)[-1]] = \
            target.stats.gram.clone()
        return super().compress(target, cfg, previous)


def _gram_of(layer, rel, hidden, kw):
    """Σ x xᵀ of ``rel``'s input over the windows, computed directly."""
    mod = layer.get_submodule(rel)
    with LayerStatsCollector({rel: mod}, True, False) as c:
        for x in hidden:
            c.new_call()
            run_layer(layer, x, kw)
    return c.stats()[rel].gram


@pytest.fixture(scope="module")
def layer0(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(3, 300, (3, 32), generator=g)
    hidden, kwargs = capture_inputs(model, model.model.layers, windows, torch.device("cpu"))
    return model.model.layers[0], hidden, kwargs[0]


def _run(layer0, true_sequential: bool):
    dense, hidden, kw = layer0
    layer = copy.deepcopy(dense)
    spy = _SpyGPTQ()
    stage = Stage(method=spy, cfg=GPTQConfig(bits=2, group_size=32, true_sequential=true_sequential))
    targets = target_linears(layer)
    from compressor.core.context import PassContext
    from compressor.core.distributed import Distributed
    from compressor.core.pipeline import CompressJob
    job = CompressJob(layers_path="model.layers", stages=[stage], needs=frozenset({"gram"}),
                      targets_of=target_linears, kind_of=linear_kind)
    ctx = PassContext(device=torch.device("cpu"), seed=0, storage_dtype=torch.float32,
                      dist=Distributed())
    rows = compress_layer(0, layer, targets, hidden, kw, job, ctx, lambda _: None)
    assert [r.name for r in rows] == [f"model.layers.0.{rel}" for rel in targets]
    return layer, spy.grams


def test_o_proj_gram_comes_from_quantized_qkv(layer0):
    dense, hidden, kw = layer0
    layer, grams = _run(layer0, True)
    # reference: the dense layer with only q/k/v swapped for their compressed modules
    ref = copy.deepcopy(dense)
    for rel in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        ref.self_attn.__setattr__(rel.split(".")[1], copy.deepcopy(layer.get_submodule(rel)))
    expected = _gram_of(ref, "self_attn.o_proj", hidden, kw)
    torch.testing.assert_close(grams["self_attn.o_proj"], expected, rtol=1e-5, atol=1e-5)
    dense_gram = _gram_of(dense, "self_attn.o_proj", hidden, kw)
    assert (grams["self_attn.o_proj"] - dense_gram).norm() > 1e-3 * dense_gram.norm()
    # q/k/v themselves see the dense layer's input (they are the first group)
    torch.testing.assert_close(grams["self_attn.q_proj"],
                               _gram_of(dense, "self_attn.q_proj", hidden, kw))
    # down_proj: everything before it quantized (attention and gate/up)
    ref_mlp = copy.deepcopy(layer)
    ref_mlp.mlp.down_proj = copy.deepcopy(dense.mlp.down_proj)
    torch.testing.assert_close(grams["mlp.down_proj"], _gram_of(ref_mlp, "mlp.down_proj", hidden, kw),
                               rtol=1e-5, atol=1e-5)


def test_without_true_sequential_every_gram_is_the_dense_layers(layer0):
    dense, hidden, kw = layer0
    _, grams = _run(layer0, False)
    for rel in ("self_attn.o_proj", "mlp.down_proj"):
        torch.testing.assert_close(grams[rel], _gram_of(dense, rel, hidden, kw))
