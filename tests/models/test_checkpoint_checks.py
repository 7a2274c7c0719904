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


@pytest.mark.parametrize("header", [b"[1,2,3]", b'"text"', b'{"w": [1]}', b'{"w": {"x": 1}}'])
def test_a_safetensors_header_of_the_wrong_shape_is_one_line(tiny_model_dir, tmp_path, header):
    """Valid JSON that is not a tensor table (a list, a string, entries without offsets)."""
    import struct
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data[8 + n:])
    with pytest.raises(UserError, match="is corrupt") as e:
        load_model(str(folder))
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_whole_checkpoint_loads(tiny_model_dir):
    load_model(str(tiny_model_dir))


@pytest.mark.parametrize("key", ["model.layers.1.mlp.down_proj.weight", "model.norm.weight"])
def test_a_streamed_read_refuses_nan_like_the_whole_load(tiny_model_dir, tmp_path, key):
    """--stream never loads the model whole: each tensor is checked as it is read."""
    from compressor.api import compress
    from compressor.recipe import parse_recipe
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    st = load_file(folder / "model.safetensors")
    st[key].view(-1)[0] = float("nan")
    save_file(st, str(folder / "model.safetensors"), metadata={"format": "pt"})
    recipe = parse_recipe({"model": str(folder), "output": str(tmp_path / "out"),
                           "stages": [{"method": "rtn", "bits": 4, "group_size": 32}]})
    with pytest.raises(UserError, match="NaN or Inf") as e:
        compress(recipe, stream=True)
    assert "\n" not in str(e.value) and key in str(e.value)
    assert not (tmp_path / "out").exists()
