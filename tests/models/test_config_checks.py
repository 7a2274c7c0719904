"""An absurd config.json is refused in one line before transformers builds anything from it."""

from __future__ import annotations

import json
import shutil

import pytest

from compressor.errors import UserError
from compressor.models import load_model


@pytest.mark.parametrize("field,value,match", [
    ("num_attention_heads", 0, "must be a positive integer"),
    ("vocab_size", -5, "must be a positive integer"),
    ("num_attention_heads", 3, "not divisible by num_attention_heads"),
    ("num_key_value_heads", 3, "not divisible by\\s+num_key_value_heads"),
    ("hidden_size", 10 ** 9, "more than the"),
    ("num_hidden_layers", 10 ** 6, "more than the"),
])
def test_absurd_config_is_refused(tiny_model_dir, tmp_path, field, value, match):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg[field] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=match) as e:
        load_model(str(folder))
    assert "\n" not in str(e.value) and field.split("_")[-1] in str(e.value) or "parameters" in str(e.value)
