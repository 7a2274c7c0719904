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
    # sizes the weight files cannot back: refused before transformers allocates (and
    # randomly fills) what the config says
    ("hidden_size", 10 ** 9, "weight files hold only 0.3"),
    ("vocab_size", 10 ** 7, "weight files hold only 0.3"),
    ("num_hidden_layers", 10 ** 6, "the weight files hold 2 decoder layers"),
    ("num_hidden_layers", 3, "the weight files hold 2 decoder layers"),
    ("num_hidden_layers", 1, "the weight files hold 2 decoder layers"),
    ("dtype", "float3:", "is not a torch dtype name"),   # transformers: AttributeError
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


def test_a_config_beyond_the_memory_available_is_refused(tiny_model_dir):
    from compressor.models.integrity import check_config
    with pytest.raises(UserError, match=r"describes about .* more than the .* GiB available: "
                                        "use --stream") as e:
        check_config(tiny_model_dir, available_bytes=1000)
    assert "\n" not in str(e.value)
