"""A checkpoint transformers would load only in part is refused before the first forward:
a missing tensor (else filled with random values), NaN or Inf in a weight."""

from __future__ import annotations

import shutil

import pytest
from safetensors.torch import load_file, save_file

from compressor.errors import UserError
from compressor.models import load_model


@pytest.mark.parametrize("case,match", [("missing", "lacks 1 tensor"), ("inf", "NaN or Inf"),
                                        ("nan", "NaN or Inf")])
def test_broken_checkpoint_is_refused_in_one_line(tiny_model_dir, tmp_path, case, match):
    folder = tmp_path / case
    shutil.copytree(tiny_model_dir, folder)
    st = load_file(folder / "model.safetensors")
    key = "model.layers.1.mlp.down_proj.weight"
    if case == "missing":
        st.pop(key)
    else:
        st[key][0, 0] = float(case)
    save_file(st, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=match) as e:
        load_model(str(folder))
    assert "\n" not in str(e.value) and key in str(e.value)


def test_whole_checkpoint_loads(tiny_model_dir):
    load_model(str(tiny_model_dir))
