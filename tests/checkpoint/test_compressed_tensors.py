"""compressed-tensors export: svdc's codes, scales and zeros converted (not re-quantized), loaded
by plain transformers (+ PEFT for the low-rank paths), giving svdc's logits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import compressor
from compressor.errors import UserError

ct = pytest.importorskip("compressed_tensors")

from compressor.checkpoint.compressed_tensors import (
    ct_dense,
    ct_tensors,
    export_compressed_tensors,
    pack_rows_int32,
    unpack_rows_int32,
)


def _ids(n=24, hi=300):
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, hi, (2, n), generator=g)




def _hf(path: Path, **kw):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, **kw).eval()


def _cli(*argv: str) -> int:
    from compressor import cli
    old = sys.argv
    sys.argv = ["svdc", *argv]
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        sys.argv = old
    return e.value.code


# ------------------------------------------------------------------ packing and mapping (unit)
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("shape", [(6, 96), (3, 37), (4, 1)])
def test_packing_matches_compressed_tensors(bits, shape):
    """Our row packer is compressed-tensors' layout (>= 0.18), bit for bit, both packed dims."""
    from compressed_tensors.compressors.pack_quantized.helpers import (
        pack_to_int32,
        unpack_from_int32,
    )
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2 ** bits, shape, generator=g).to(torch.uint8)
    signed = (codes.to(torch.int16) - 2 ** (bits - 1)).to(torch.int8)
    packed = pack_rows_int32(codes, bits)
    assert packed.dtype == torch.int32 and packed.shape == (shape[0], -(-shape[1] * bits // 32))
    assert torch.equal(packed, pack_to_int32(signed, bits))
    assert torch.equal(pack_rows_int32(codes.t(), bits).t(), pack_to_int32(signed, bits, packed_dim=0))
    assert torch.equal(unpack_rows_int32(packed, bits, shape[1]), codes)
    assert torch.equal(unpack_from_int32(packed, bits, torch.Size(shape)), signed)


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("bits", [3, 4])
def test_converted_tensors_dequantize_to_svdc_weight(bits, sym):
    """Format definition and compressed-tensors' own decompressor both give svdc's weight exactly."""
    from compressed_tensors.compressors.pack_quantized.base import (
        PackedQuantizationCompressor,
    )
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    from compressor.parts.quantized import UniformQuantPart
    from compressor.primitives.grids import quantize_rtn
    w = torch.randn(40, 96, generator=torch.Generator().manual_seed(0))
    part = UniformQuantPart.from_quant(quantize_rtn(w, bits, 32, sym))
    t = ct_tensors(part)
    assert torch.equal(ct_dense(t, bits, sym), part.dense())
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=bits, symmetric=sym, strategy="group", group_size=32))
    assert torch.equal(PackedQuantizationCompressor.decompress(dict(t), scheme)["weight"], part.dense())


# ------------------------------------------------------------------ tiny Llama, end to end


@pytest.mark.parametrize("bits,sym", [(3, True), (3, False), (4, True), (4, False), (2, False), (8, True)])
def test_gptq_export_loads_in_plain_transformers_with_svdc_logits(runs, tmp_path, bits, sym):
    src = runs(bits, sym)
    dst = export_compressed_tensors(src, tmp_path / "ct")
    qc = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "pack-quantized" and qc["quantization_status"] == "compressed"
    (group,) = qc["config_groups"].values()
    assert group["weights"]["num_bits"] == bits and group["weights"]["symmetric"] == sym
    assert group["weights"]["strategy"] == "group" and group["weights"]["group_size"] == 32
    assert len(group["targets"]) == 2 * 7
    ids = _ids()
    with torch.no_grad():
        want = compressor.load(src)(ids).logits
        assert torch.equal(_hf(dst, quantization_config=_deq())(ids).logits, want)
        if sym:   # transformers' default (compressed) path cannot size packed zero points
            assert torch.equal(_hf(dst)(ids).logits, want)


def _deq():
    """The documented load path for asymmetric grids (README, Deploy)."""
    from transformers.utils.quantization_config import CompressedTensorsConfig
    return CompressedTensorsConfig(dequantize=True)


def test_mixed_bits_get_one_config_group_each(runs, tmp_path):
    """Layers at 8, 4 and 3 bits (one per-row): one config group per scheme, each layer decoded
    with its own (transformers' default path; its dequantize=True path applies one scheme to all)."""
    from transformers import AutoTokenizer

    from compressor.checkpoint import save_compressed
    from compressor.parts.quantized import UniformQuantPart
    from compressor.primitives.grids import quantize_rtn
    src = runs(4, True)
    model = compressor.load(src)
    mods = dict(compressor.checkpoint.compressed_modules(model))
    swaps = {"model.layers.0.mlp.down_proj": (8, 32, True), "model.layers.1.mlp.up_proj": (3, 32, True),
             "model.layers.1.self_attn.o_proj": (4, -1, True)}
    for name, (bits, gs, sym) in swaps.items():
        w = mods[name].dense_weight()
        mods[name].parts[0] = UniformQuantPart.from_quant(quantize_rtn(w, bits, gs, sym))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    save_compressed(model, AutoTokenizer.from_pretrained(src), mixed)
    dst = export_compressed_tensors(mixed, tmp_path / "ct")
    groups = json.loads((dst / "config.json").read_text())["quantization_config"]["config_groups"]
    schemes = {(g["weights"]["num_bits"], g["weights"]["symmetric"], g["weights"]["strategy"]): g["targets"]
               for g in groups.values()}
    assert schemes[(8, True, "group")] == ["model.layers.0.mlp.down_proj"]
    assert schemes[(3, True, "group")] == ["model.layers.1.mlp.up_proj"]
    assert schemes[(4, True, "channel")] == ["model.layers.1.self_attn.o_proj"]
    assert len(schemes[(4, True, "group")]) == 14 - 3
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(_hf(dst)(ids).logits, compressor.load(mixed)(ids).logits)


def test_eora_base_plus_adapter_in_peft_gives_svdc_logits(runs, tmp_path):
    peft = pytest.importorskip("peft")
    src = runs(3, False, eora_rank=8)
    assert _cli("export", str(src), "--format", "compressed-tensors", "-o", str(tmp_path / "ct")) == 0
    dst = tmp_path / "ct"
    acfg = json.loads((dst / "adapter" / "adapter_config.json").read_text())
    assert acfg["r"] == acfg["lora_alpha"] == 8 and len(acfg["target_modules"]) == 7
    assert "quantization_config" in json.loads((dst / "base" / "config.json").read_text())
    ids = _ids()
    with torch.no_grad():
        want = compressor.load(src)(ids).logits
        base = _hf(dst / "base", quantization_config=_deq())
        without = base(ids).logits
        model = peft.PeftModel.from_pretrained(base, dst / "adapter").eval()
        got = model(ids).logits
    assert not torch.allclose(without, want, atol=1e-3)        # the adapter carries the paths
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_dense_peft_export_still_matches_after_sharing_its_helpers(runs, tmp_path):
    """--format peft-adapter uses the same split/write helpers as the compressed-tensors export."""
    peft = pytest.importorskip("peft")
    from compressor.checkpoint import export_peft_adapter
    src = runs(3, False, eora_rank=8)
    dst = export_peft_adapter(src, tmp_path / "peft")
    assert "quantization_config" not in json.loads((dst / "base" / "config.json").read_text())
    ids = _ids()
    with torch.no_grad():
        want = compressor.load(src)(ids).logits
        got = peft.PeftModel.from_pretrained(_hf(dst / "base"), dst / "adapter").eval()(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_ragged_group_is_refused_in_one_line(runs, tmp_path, capsys):
    """Group 64 does not divide the tiny model's FFN width 96: one line naming layers and fix."""
    src = runs(4, True, group_size=64)
    with pytest.raises(UserError) as e:
        export_compressed_tensors(src, tmp_path / "ct")
    msg = str(e.value)
    assert "\n" not in msg
    assert "model.layers.{0-1}.mlp.down_proj" in msg and "[96]" in msg
    assert "--group-size 32" in msg and "exclude" in msg and "down_proj" in msg
    assert "q_proj" not in msg
    assert not (tmp_path / "ct").exists()
    assert _cli("export", str(src), "--format", "compressed-tensors", "-o", str(tmp_path / "ct")) == 2
    assert "ragged" in capsys.readouterr().err.replace("\n", " ")


def test_unexpressible_parts_are_refused(tiny_model_dir, tmp_path, compress_tiny):
    src = compress_tiny(tiny_model_dir, tmp_path / "svd", [{"method": "svd", "ratio": 0.3}])
    with pytest.raises(UserError, match=r"^cannot export to compressed-tensors: .*low-rank-only.*--format dense"):
        export_compressed_tensors(src, tmp_path / "ct")


def test_missing_package_names_the_extra(monkeypatch, runs, tmp_path):
    monkeypatch.setitem(sys.modules, "compressed_tensors", None)
    with pytest.raises(UserError, match=r"pip install 'svdc\[export\]'"):
        export_compressed_tensors(runs(4, True), tmp_path / "ct")


# ------------------------------------------------------------------ SmolLM2 (real checkpoint)
@pytest.fixture(scope="module")
def smollm2_gptq(tmp_path_factory):
    def run(bits: int, sym: bool, rank: int | None = None) -> Path:
        out = tmp_path_factory.mktemp("smol") / f"gptq{bits}{'s' if sym else 'a'}{rank or ''}"
        argv = ["compress", "smollm2-135m", "--method", "eora" if rank else "gptq", "--bits", str(bits),
                "--group-size", "64", "--set", f"sym={str(sym).lower()}", "--calib", "builtin",
                "--nsamples", "2", "--seqlen", "64", "-o", str(out)]
        if rank:
            argv[4:4] = ["--base", "gptq", "--rank", str(rank)]
        assert _cli(*argv) == 0
        return out
    return run


@pytest.mark.slow
@pytest.mark.parametrize("bits,sym", [(3, False), (4, True)])
def test_smollm2_gptq_export_matches(smollm2_gptq, tmp_path, bits, sym):
    src = smollm2_gptq(bits, sym)
    assert _cli("export", str(src), "--format", "compressed-tensors", "-o", str(tmp_path / "ct")) == 0
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    with torch.no_grad():
        want = compressor.load(src)(ids).logits
        # SmolLM2's conversion is bf16: transformers' default compressed-tensors path rounds
        # the scales to bf16 there (exact only for fp32 models, tested on the tiny Llama), so
        # the documented dequantize=True path is the exact one for both grids.
        got = _hf(tmp_path / "ct", quantization_config=_deq())(ids).logits
    assert torch.equal(got, want)


@pytest.mark.slow
def test_smollm2_eora_base_plus_adapter(smollm2_gptq, tmp_path):
    peft = pytest.importorskip("peft")
    src = smollm2_gptq(4, False, rank=16)
    dst = export_compressed_tensors(src, tmp_path / "ct")
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    with torch.no_grad():
        # both sides compute in float32 (the bf16-stored values are exact there), so what is
        # compared is the export, not two bf16 op orders
        want = compressor.load(src, dtype=torch.float32)(ids).logits
        base = _hf(dst / "base", quantization_config=_deq(), dtype=torch.float32)
        got = peft.PeftModel.from_pretrained(base, dst / "adapter").eval()(ids).logits
    torch.testing.assert_close(got.float(), want, rtol=0, atol=1e-4)
