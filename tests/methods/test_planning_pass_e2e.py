"""The planning pass end to end on the tiny model: plans that need calibration statistics
(LQ-LoRA's output-error ILP, WeLore on whitened spectra) get them, and the result loads."""
import pytest

from compressor.api import compress
from compressor.recipe import parse_recipe


@pytest.mark.parametrize("stage", [
    {"method": "lqlora", "bits": 4.5, "rank": 2, "nf_bits": [2, 3, 4], "block_sizes": [64]},
    {"method": "whitened-svd", "ratio": 0.2, "allocation": "welore"},
])
def test_e2e(tiny_model_dir, tmp_path, stage):
    r = parse_recipe({"model": str(tiny_model_dir), "stages": [stage], "output": str(tmp_path / "o"),
                      "calibration": {"nsamples": 4, "seqlen": 64, "seed": 0}})
    res = compress(r)
    mods = res.report["modules"]
    assert res.report["stage_seconds"]["plan.data_pass"] > 0
    if stage["method"] == "lqlora":    # 4.5 bits of 32: the factors (float16) included
        assert sum(m["bytes_after"] for m in mods) / sum(m["bytes_before"] for m in mods) <= 4.5 / 32
        assert all(m["info"]["factor_dtype"] == "float16" for m in mods)
    else:
        assert any(m["info"]["welore"] == "N-LRC" for m in mods) or \
            len({m["info"]["rank"] for m in mods}) > 3
    from compressor.checkpoint.load import load_compressed
    m2 = load_compressed(tmp_path / "o")
    assert m2 is not None
