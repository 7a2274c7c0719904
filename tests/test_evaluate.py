"""Perplexity: known answer against a brute-force computation, protocol metadata, NaN guard."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

import compressor.data as data
from compressor.errors import UserError
from compressor.evaluate import evaluate, perplexity

WORDS = "alpha beta gamma delta river stone light cloud market paper engine garden".split()


def tiny_tokenizer():
    """Byte-level BPE trained in-test: covers any text, needs no network."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=["<s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>")


def tiny_llama(vocab: int, max_pos: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_pos)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(len(tok))


def brute_force_ppl(model, windows: torch.Tensor) -> float:
    """exp(mean CE) over every predicted position of every window, one window at a time."""
    losses = []
    with torch.no_grad():
        for w in windows:
            logits = model(input_ids=w[None]).logits[0, :-1].double()
            losses.append(F.cross_entropy(logits, w[1:], reduction="none"))
    return math.exp(torch.cat(losses).mean().item())


def test_perplexity_matches_brute_force(model, tok):
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, len(tok), (5, 12), generator=g)
    expected = brute_force_ppl(model, windows)
    for bs in (1, 2, 5):        # ragged last batch with bs=2
        res = perplexity(model, windows, "cpu", batch_size=bs)
        assert res["ppl"] == pytest.approx(expected, rel=1e-5)
        assert res["scored_tokens"] == 5 * 11 and res["n_windows"] == 5
        assert res["nll"] == pytest.approx(math.log(expected) * 55, rel=1e-5)


def test_perplexity_of_a_known_distribution():
    """A model whose logits are all equal scores every token at exactly 1/vocab."""
    class Uniform(torch.nn.Module):
        def forward(self, input_ids, use_cache=False):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 7)})()
    res = perplexity(Uniform(), torch.randint(0, 7, (3, 9)), "cpu")
    assert res["ppl"] == pytest.approx(7.0, rel=1e-6)   # CE runs in fp32


def test_progress_is_reported_and_mode_restored(model, tok):
    windows = torch.randint(0, len(tok), (5, 8), generator=torch.Generator().manual_seed(1))
    seen = []
    model.train()
    perplexity(model, windows, "cpu", batch_size=2, progress=lambda i, n: seen.append((i, n)))
    assert seen == [(2, 5), (4, 5), (5, 5)]
    assert model.training
    model.eval()


def test_non_finite_loss_raises(tok):
    bad = tiny_llama(len(tok))
    with torch.no_grad():
        bad.model.norm.weight.fill_(float("nan"))
    windows = torch.randint(0, len(tok), (2, 8), generator=torch.Generator().manual_seed(2))
    with pytest.raises(UserError, match="not finite"):
        perplexity(bad, windows, "cpu")


@pytest.fixture
def txt_file(tmp_path):
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(30)) for _ in range(30)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs), encoding="utf-8")
    return path


def test_evaluate_records_the_protocol(tok, txt_file):
    model = tiny_llama(len(tok), max_pos=16)
    res = evaluate(model, tok, str(txt_file), seqlen=64, max_windows=3)
    assert res["seqlen"] == 16 and res["seqlen_requested"] == 64   # capped by the context
    windows, meta = data.eval_windows(tok, str(txt_file), 16, max_windows=3)
    assert res["ppl"] == pytest.approx(brute_force_ppl(model, windows), rel=1e-5)
    assert res["n_windows"] == 3 and res["partial"] is True
    assert res["label"] == f"partial (3/{meta['total_windows']} windows)"
    assert res["dataset"] == "corpus.txt" and res["split"] == "all"   # a user file: scored whole
    assert res["documents"] == res["documents_in_file"] == 30
    assert res["dtype"] == "float32" and res["elapsed_s"] >= 0
    assert res["tokenizer"] and res["revision"].startswith("sha256:")

    full = evaluate(model, tok, str(txt_file), seqlen=16)
    assert full["label"] == "full" and full["n_windows"] == meta["total_windows"]
