"""GGUF export: svdc's codes as ggml blocks (converted, not re-rounded), read back by the gguf
package and by transformers' GGUF loader with svdc's logits; what GGUF cannot hold is refused."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import compressor
from compressor.checkpoint.gguf_blocks import to_blocks
from compressor.checkpoint.gguf_export import export_gguf
from compressor.errors import UserError
from compressor.primitives.grids import quantize_rtn

gguf = pytest.importorskip("gguf")






@pytest.mark.parametrize("bits,sym,kind", [(4, True, "Q4_0"), (8, True, "Q8_0"), (4, False, "Q4_1")])
def test_blocks_dequantize_to_svdc_weight(bits, sym, kind):
    """gguf-py's own decoder of our blocks gives exactly svdc's dequantized weight."""
    from compressor.primitives.grids import dequantize
    w = torch.randn(8, 128, generator=torch.Generator().manual_seed(0))
    q = quantize_rtn(w, bits=bits, group_size=32, sym=sym)
    blocks = to_blocks(q, kind)
    got = gguf.quants.dequantize(blocks, getattr(gguf.GGMLQuantizationType, kind))
    want = dequantize(q).numpy()
    if kind == "Q4_1":   # m = -d*z rounded to fp16: within that rounding
        np.testing.assert_allclose(got, want, rtol=0, atol=float(q.scale.max()) * 2 ** -10 * 16)
    else:
        assert np.array_equal(got, want)


def _hf_gguf(path: Path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                dtype=torch.float32).eval()


@pytest.mark.parametrize("bits,sym,kind", [(4, True, "Q4_0"), (8, True, "Q8_0")])
def test_transformers_gguf_loader_gives_svdc_logits(runs, tmp_path, bits, sym, kind):
    src = runs(bits, sym)
    dst = export_gguf(src, tmp_path / "m.gguf")
    r = gguf.GGUFReader(dst)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == kind and types["blk.1.ffn_down.weight"] == kind
    assert "output.weight" not in types          # tied head: llama.cpp reuses token_embd
    import json
    fp = json.loads((src / "config.json").read_text())["compression_config"]["recipe_fingerprint"]
    assert r.fields["svdc.methods"].contents() == "gptq"
    assert r.fields["svdc.recipe_fingerprint"].contents() == fp and fp
    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = compressor.load(src, dtype=torch.float32)(ids).logits
        got = _hf_gguf(dst)(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_q4_1_through_transformers_is_svdc_within_the_stored_offset_rounding(runs, tmp_path):
    """Q4_1's offset m = -d*z is stored in fp16: the file says how far it rounds
    (svdc.q4_1_offset_rounding), every weight transformers dequantizes is svdc's within it, and
    the logits follow."""
    src = runs(4, False)
    dst = export_gguf(src, tmp_path / "m.gguf")
    r = gguf.GGUFReader(dst)
    assert {t.tensor_type.name for t in r.tensors if len(t.shape) == 2} >= {"Q4_1"}
    bound = float(r.fields["svdc.q4_1_offset_rounding"].contents())
    assert 0 < bound < 1e-3
    mine, theirs = compressor.load(src, dtype=torch.float32), _hf_gguf(dst)
    for name in ("model.layers.0.mlp.down_proj", "model.layers.1.self_attn.o_proj"):
        want = mine.get_submodule(name).dense_weight()
        got = theirs.get_submodule(name).weight.detach()
        assert float((got - want).abs().max()) <= bound * (1 + 1e-3)
    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, mine(ids).logits, rtol=0, atol=1e-3)


def test_tokenizer_round_trips(runs, tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer
    dst = export_gguf(runs(4, True), tmp_path / "m.gguf")
    mine = AutoTokenizer.from_pretrained(tiny_model_dir)
    theirs = AutoTokenizer.from_pretrained(dst.parent, gguf_file=dst.name)
    text = "The history of Alabama, 1819: statehood and its aftermath."
    assert theirs(text)["input_ids"][-12:] == mine(text)["input_ids"][-12:]


def test_pre_tokenizer_has_a_name_llama_cpp_knows(runs, tmp_path):
    """llama.cpp refuses an unknown ``tokenizer.ggml.pre`` at load ("gpt2" was once written):
    the GPT-2 split alone is "gpt-2", digits split first is "smollm", anything else refused."""
    from compressor.checkpoint.gguf_export import _pre_tokenizer
    dst = export_gguf(runs(4, True), tmp_path / "m.gguf")
    assert gguf.GGUFReader(dst).fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    bl = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert _pre_tokenizer({"pre_tokenizer": bl}) == "gpt-2"
    digits = {"type": "Digits", "individual_digits": True}
    assert _pre_tokenizer({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [digits, bl]}}) == "smollm"
    with pytest.raises(UserError, match="^cannot export to GGUF: pre-tokenizer"):
        _pre_tokenizer({"pre_tokenizer": {"type": "Metaspace"}})


def test_norms_of_a_bf16_model_are_f32(tiny_model_dir, tmp_path, compress_tiny):
    """llama.cpp's CPU backend aborts on a BF16 norm (no f32 x bf16 MUL): 1-D tensors are
    written F32, an exact upcast; 2-D kept tensors stay BF16; the logits are unchanged."""
    import shutil

    from transformers import AutoModelForCausalLM
    src = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(src)
    for f in tiny_model_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, src / f.name)
    out = compress_tiny(src, tmp_path / "q", [{"method": "gptq", "bits": 4, "group_size": 32, "sym": True}])
    dst = export_gguf(out, tmp_path / "m.gguf")
    types = {t.name: (t.tensor_type.name, len(t.shape)) for t in gguf.GGUFReader(dst).tensors}
    one_d = {n: ty for n, (ty, d) in types.items() if d == 1}
    assert "output_norm.weight" in one_d and "blk.0.attn_norm.weight" in one_d
    assert set(one_d.values()) == {"F32"}
    assert types["token_embd.weight"] == ("BF16", 2)
    ids = torch.randint(3, 300, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = compressor.load(out, dtype=torch.float32)(ids).logits
        got = _hf_gguf(dst)(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_eora_paths_go_in_a_lora_adapter_beside_the_base(runs, tmp_path):
    src = runs(4, True, eora_rank=8)
    dst = export_gguf(src, tmp_path / "m.gguf")
    lora = gguf.GGUFReader(tmp_path / "m.lora.gguf")
    names = {t.name for t in lora.tensors}
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.1.ffn_down.weight.lora_b" in names
    assert lora.fields["adapter.type"].contents() == "lora"
    # the base alone is the quantized model without its paths: W = Q, and Q + B·A is svdc's
    base = {t.name: t for t in gguf.GGUFReader(dst).tensors}
    a = next(t for t in lora.tensors if t.name == "blk.1.ffn_down.weight.lora_a")
    b = next(t for t in lora.tensors if t.name == "blk.1.ffn_down.weight.lora_b")
    t = base["blk.1.ffn_down.weight"]
    q = gguf.quants.dequantize(t.data, t.tensor_type)
    merged = q + np.asarray(b.data) @ np.asarray(a.data)
    want = compressor.load(src, dtype=torch.float32).get_submodule(
        "model.layers.1.mlp.down_proj").dense_weight().numpy()
    np.testing.assert_allclose(merged, want, rtol=0, atol=1e-5)


def test_unexpressible_grids_are_refused_in_one_line(runs, tmp_path):
    with pytest.raises(UserError) as e:
        export_gguf(runs(3, True), tmp_path / "m.gguf")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("cannot export to GGUF")
    assert "3-bit" in msg and "--group-size 32" in msg
    assert not (tmp_path / "m.gguf").exists()


def test_low_rank_only_is_refused(tiny_model_dir, tmp_path, compress_tiny):
    src = compress_tiny(tiny_model_dir, tmp_path / "svd", [{"method": "svd", "ratio": 0.3}])
    with pytest.raises(UserError, match=r"^cannot export to GGUF: .*low-rank-only"):
        export_gguf(src, tmp_path / "m.gguf")


def test_output_is_guarded(runs, tmp_path):
    src = runs(4, True)
    other = tmp_path / "notes.gguf"
    other.write_text("mine")
    with pytest.raises(UserError, match="not a GGUF file"):
        export_gguf(src, other, force=True)
    assert other.read_text() == "mine"
    link = tmp_path / "link.gguf"
    link.symlink_to(tmp_path / "elsewhere.gguf")
    with pytest.raises(UserError, match="symbolic link"):
        export_gguf(src, link)
    with pytest.raises(UserError, match="FILE.gguf"):
        export_gguf(src, tmp_path / "m.bin")
    export_gguf(src, tmp_path / "m.gguf")
    with pytest.raises(UserError, match="exists"):
        export_gguf(src, tmp_path / "m.gguf")
    export_gguf(src, tmp_path / "m.gguf", force=True)


def test_cli_export_gguf(runs, tmp_path, capsys):
    from compressor import cli
    old = sys.argv
    sys.argv = ["svdc", "export", str(runs(4, True)), "--format", "gguf", "-o", str(tmp_path / "x.gguf")]
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        sys.argv = old
    assert e.value.code in (0, None)
    assert (tmp_path / "x.gguf").read_bytes()[:4] == b"GGUF"


@pytest.mark.slow
def test_smollm2_q4_0_export_gives_svdc_logits(tmp_path):
    """The real checkpoint: GPTQ 4-bit g32 sym + EoRA, exported; the base GGUF through
    transformers' loader equals svdc's model without its paths, the tokenizer the same ids."""
    import subprocess

    from transformers import AutoTokenizer

    from compressor.checkpoint.export import split_lowrank_paths
    out = tmp_path / "smol"
    run = subprocess.run([sys.executable, "-m", "compressor", "compress", "smollm2-135m", "--method",
                          "eora", "--base", "gptq", "--bits", "4", "--group-size", "32", "--set",
                          "sym=true", "--rank", "8", "--calib", "builtin", "--nsamples", "2",
                          "--seqlen", "64", "-o", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    dst = export_gguf(out, tmp_path / "smol.gguf")
    assert (tmp_path / "smol.lora.gguf").is_file()
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 2000, 77]])
    model = compressor.load(out, dtype=torch.float32)
    split_lowrank_paths(model)
    with torch.no_grad():
        assert torch.equal(_hf_gguf(dst)(ids).logits, model(ids).logits)
    text = "The Alabama River flows 318 miles; it's named after the Alabama people."
    theirs = AutoTokenizer.from_pretrained(dst.parent, gguf_file=dst.name)
    assert theirs(text)["input_ids"] == AutoTokenizer.from_pretrained(out)(text)["input_ids"]


@pytest.mark.slow
@pytest.mark.parametrize("bits,sym,kind", [(8, True, "Q8_0"), (4, False, "Q4_1")])
def test_smollm2_q8_0_and_q4_1_exports_give_svdc_logits(tmp_path, bits, sym, kind):
    """The real checkpoint at the other two block types: Q8_0 exactly, Q4_1 within its stored
    fp16 offset rounding."""
    import subprocess
    out = tmp_path / "smol"
    run = subprocess.run([sys.executable, "-m", "compressor", "compress", "smollm2-135m", "--method",
                          "gptq", "--bits", str(bits), "--group-size", "32", "--set",
                          f"sym={str(sym).lower()}", "--calib", "builtin", "--nsamples", "2",
                          "--seqlen", "64", "-o", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    dst = export_gguf(out, tmp_path / "smol.gguf")
    r = gguf.GGUFReader(dst)
    assert r.fields["general.file_type"].contents() == int(getattr(gguf.LlamaFileType, f"MOSTLY_{kind}"))
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 2000, 77]])
    with torch.no_grad():
        want = compressor.load(out, dtype=torch.float32)(ids).logits
        got = _hf_gguf(dst)(ids).logits
    if kind == "Q8_0":
        assert torch.equal(got, want)
        return
    bound = float(r.fields["svdc.q4_1_offset_rounding"].contents())
    mine, theirs = compressor.load(out, dtype=torch.float32), _hf_gguf(dst)
    for name in ("model.layers.0.mlp.down_proj", "model.layers.29.self_attn.o_proj"):
        diff = theirs.get_submodule(name).weight.detach() - mine.get_submodule(name).dense_weight()
        assert float(diff.abs().max()) <= bound * (1 + 1e-3)
    # 30 layers of offsets within that rounding move the logits (scale ~10) by up to ~0.05
    torch.testing.assert_close(got, want, rtol=0, atol=0.1)
