"""Compressed tiny-Llama outputs shared by the export tests (each compressed once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compressor.api import compress
from compressor.recipe import parse_recipe


def _compress_tiny(model_dir: Path, out: Path, stages) -> Path:
    data = {"model": str(model_dir), "stages": stages, "output": str(out),
            "calibration": {"nsamples": 4, "seqlen": 64, "seed": 0}}
    return compress(parse_recipe(data)).output


@pytest.fixture
def compress_tiny():
    """compress_tiny(model_dir, out, stages) -> the written output folder."""
    return _compress_tiny


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """GPTQ outputs (+ an EoRA path), compressed once per (bits, sym, group, rank)."""
    cache: dict = {}

    def get(bits: int, sym: bool, group_size: int = 32, eora_rank: int | None = None) -> Path:
        key = (bits, sym, group_size, eora_rank)
        if key not in cache:
            stages = [{"method": "gptq", "bits": bits, "group_size": group_size, "sym": sym}]
            if eora_rank:
                stages.append({"method": "eora", "rank": eora_rank})
            out = tmp_path_factory.mktemp("run") / "_".join(map(str, key))
            cache[key] = _compress_tiny(tiny_model_dir, out, stages)
        return cache[key]
    return get
