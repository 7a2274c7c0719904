"""A GGUF is read as data from a stranger: its header is walked with bounds checks before
transformers parses it, so huge counts, a truncation or a malformed field is one line naming
the file (it used to be a struct error, a loop over 2**40 entries, or "not a valid JSON file")."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from compressor.errors import UserError
from compressor.models import load_model, resolve_model
from compressor.models.gguf_header import check_gguf_file

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    """A small, well-formed GGUF: a few keys of every kind and two tensors (F32, F16)."""
    path = tmp_path_factory.mktemp("gguf") / "ok.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 1)
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    w.add_array("tokenizer.ggml.scores", [0.0, 1.0, 2.0])
    w.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight", np.ones((8, 8), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _fields(path: Path) -> dict:
    """name -> (offset of its value, byte length) for the header fields of ``path`` (a
    string's value is its bytes, after their 8-byte length); "tensors": (name, offset)."""
    r = gguf.GGUFReader(str(path))
    out = {}
    for f in r.fields.values():
        value = f.parts[f.data[0]] if f.data else f.parts[-1]
        start = sum(p.nbytes for p in f.parts[:f.data[0]]) if f.data else 0
        out[f.name] = (f.offset + start, value.nbytes)
    out["tensors"] = [(t.name, t.field.offset) for t in r.tensors]
    return out


def _write(tmp_path: Path, data: bytes, name: str = "bad.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _refused(path: Path, match: str) -> str:
    with pytest.raises(UserError, match=match) as e:
        check_gguf_file(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path.resolve()) in msg
    return msg


def test_a_well_formed_gguf_passes(tiny_gguf):
    summary = check_gguf_file(tiny_gguf)
    assert summary.data_bytes == 4 * 8 * 4 + 8 * 8 * 2 and summary.layers == 1


@pytest.mark.parametrize("tensors, kvs", [(2 ** 40, 5), (2, 2 ** 40), (2 ** 63, 2 ** 63)])
def test_huge_counts_are_refused_before_any_parse(tiny_gguf, tmp_path, tensors, kvs):
    data = tiny_gguf.read_bytes()
    bad = _write(tmp_path, data[:8] + struct.pack("<QQ", tensors, kvs) + data[24:])
    _refused(bad, f"its header claims {tensors} tensors and {kvs} metadata keys, more than "
                  f"its {len(data)} bytes can hold")


def test_every_truncation_is_refused_in_one_line(tiny_gguf, tmp_path):
    """Cut at every byte: each prefix is refused (the tensor data is part of the file)."""
    data = tiny_gguf.read_bytes()
    for n in range(len(data)):
        bad = _write(tmp_path, data[:n])
        with pytest.raises(UserError) as e:
            check_gguf_file(bad)
        assert "\n" not in str(e.value), n
        assert any(w in str(e.value) for w in ("truncated", "corrupt", "not a GGUF")), str(e.value)


def _patched(tiny_gguf: Path, tmp_path: Path, offset: int, raw: bytes) -> Path:
    data = bytearray(tiny_gguf.read_bytes())
    data[offset:offset + len(raw)] = raw
    return _write(tmp_path, bytes(data))


def test_malformed_fields_are_named(tiny_gguf, tmp_path):
    f = _fields(tiny_gguf)
    (_, name_off), (_, q_off) = f["tensors"]
    cases = [
        (4, struct.pack("<I", 99), "GGUF version 99"),
        # general.name's length (the 8 bytes before its value) made huge
        (f["general.name"][0] - 8, struct.pack("<Q", 2 ** 50), "past the end of the file"),
        # the first key's value type (before its string's 8-byte length) made unknown
        (f["general.architecture"][0] - 8 - 4, struct.pack("<I", 77), "value type 77"),
        # the first tensor's dimension count: after its name (8-byte length + 17 bytes)
        (name_off + 8 + len("token_embd.weight"), struct.pack("<I", 9), "claims 9 dimensions"),
        # the second tensor's ggml type: after name, n_dims (4) and 2 dims (16)
        (q_off + 8 + len("blk.0.attn_q.weight") + 4 + 16, struct.pack("<I", 250),
         "ggml type 250"),
        # the second tensor's data offset moved past the end of the file
        (q_off + 8 + len("blk.0.attn_q.weight") + 4 + 16 + 4, struct.pack("<Q", 2 ** 20),
         "past the end of the file"),
        (q_off + 8 + len("blk.0.attn_q.weight") + 4 + 16 + 4, struct.pack("<Q", 130),
         "not a multiple of the alignment"),
        # a key that is not UTF-8
        (f["general.name"][0] - 8 - 4 - len("general.name"), b"\xff\xfe", "is not UTF-8"),
    ]
    for offset, raw, match in cases:
        _refused(_patched(tiny_gguf, tmp_path, offset, raw), match)


def test_zero_alignment_is_refused(tmp_path):
    path = tmp_path / "a.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("general.alignment", 0)
    w.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    _refused(path, "general.alignment is 0")


@pytest.mark.parametrize("mangle", ["huge", "garbage"])
def test_resolve_and_load_give_the_one_line(tiny_gguf, tmp_path, mangle):
    """What used to be a struct error ("huge") and "not a valid JSON file" ("garbage")."""
    data = tiny_gguf.read_bytes()
    bad = (data[:8] + struct.pack("<QQ", 2 ** 40, 2 ** 40) + data[24:] if mangle == "huge"
           else b"GGUF" + struct.pack("<I", 3) + bytes(range(256)) * 4)
    path = _write(tmp_path, bad, f"{mangle}.gguf")
    for call in (resolve_model, load_model):
        with pytest.raises(UserError, match="is corrupt") as e:
            call(str(path))
        assert "\n" not in str(e.value)


def test_a_well_formed_gguf_that_is_no_model_is_one_line(tiny_gguf):
    """Past the header check, transformers' own refusal (here: no tokenizer) is one line too."""
    with pytest.raises(UserError) as e:
        load_model(str(tiny_gguf))
    assert "\n" not in str(e.value) and "internal" not in str(e.value)
