"""A streamed run checks every decoder layer's tensors in the headers before the first layer
is read: a tensor missing from, or misshapen in, the last layer is refused at once, before
any work, and nothing is left behind."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from compressor.api import compress
from compressor.errors import UserError
from compressor.recipe import parse_recipe


def _broken(tiny_model_dir, tmp_path, edit):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    sd = load_file(str(folder / "model.safetensors"))
    edit(sd)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.pop("model.layers.1.mlp.down_proj.weight"),
     "the checkpoint lacks model.layers.1.mlp.down_proj.weight"),
    (lambda sd: sd.__setitem__("model.layers.1.self_attn.o_proj.weight", torch.zeros(64, 32)),
     "checkpoint tensor model.layers.1.self_attn.o_proj.weight has shape [64, 32]"),
], ids=["missing", "wrong-shape"])
def test_a_broken_last_layer_is_refused_before_the_first(tiny_model_dir, tmp_path, edit,
                                                         message, monkeypatch):
    folder = _broken(tiny_model_dir, tmp_path, edit)
    import compressor.core.pipeline as pipeline
    def no_layers(*a, **k):
        raise AssertionError("a layer was compressed before the check")
    monkeypatch.setattr(pipeline, "compress_layer", no_layers)
    out = tmp_path / "out"
    recipe = parse_recipe({"model": str(folder), "output": str(out),
                           "stages": [{"method": "gptq", "bits": 4, "group_size": 32}],
                           "calibration": {"dataset": "builtin", "nsamples": 2, "seqlen": 32}})
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        compress(recipe, stream=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
