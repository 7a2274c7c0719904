"""Text sources and token windows: seeding, GPTQ eval protocol, splits, offline errors."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import re
import sys
import types
from pathlib import Path

import pytest
import torch

import compressor.data as data
from compressor.errors import UserError

REPO = Path(__file__).resolve().parent.parent
WORDS = ("alpha beta gamma delta river stone light cloud market paper engine garden north "
         "silver window morning quiet number letter simple").split()


def tiny_tokenizer():
    """Byte-level BPE trained in-test: covers any text, needs no network."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 4 + ["The cat sat on the mat."], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def make_docs(n: int, words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"Document {i}. " + " ".join(rng.choice(WORDS) for _ in range(words))
            for i in range(n)]


@pytest.fixture
def txt_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(make_docs(40, 60)) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- sources

def test_txt_source_splits_by_document_deterministically(txt_file):
    calib, test = data.load_split(str(txt_file), "calib"), data.load_split(str(txt_file), "test")
    assert sorted(calib + test) == sorted(make_docs(40, 60))
    assert not set(calib) & set(test)
    assert 1 <= len(test) < len(calib)
    for doc in test:   # the documented rule: sha256(document) % 100 < 10
        key = int.from_bytes(hashlib.sha256(doc.encode()).digest()[:8], "big")
        assert key % 100 < data.LOCAL_TEST_PERCENT
    assert data.load_split(str(txt_file), "test") == test


def test_txt_keeps_lines_inside_a_document(tmp_path):
    path = tmp_path / "two.txt"
    path.write_text(" = Title = \nline one\nline two\n\n\n  \nsecond doc\n", encoding="utf-8")
    docs = data.load_split(str(path), "calib") + data.load_split(str(path), "test")
    assert sorted(docs) == sorted([" = Title = \nline one\nline two", "second doc"])


def test_jsonl_source_loads_text_field(tmp_path):
    docs = make_docs(30, 20)
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)),
                    encoding="utf-8")
    got = data.load_split(str(path), "calib") + data.load_split(str(path), "test")
    assert sorted(got) == sorted(docs)


def test_jsonl_without_text_field_is_a_user_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.jsonl:2"):
        data.load_split(str(path), "calib")


def test_unknown_source_lists_the_valid_ones():
    with pytest.raises(UserError, match="builtin, wikitext2, c4"):
        data.load_split("wikitext-103", "calib")
    with pytest.raises(UserError, match="not found"):
        data.load_split("/no/such/file.txt", "calib")


def test_builtin_calib_and_test_share_no_article():
    calib, test = data.load_split("builtin", "calib"), data.load_split("builtin", "test")
    title = re.compile(r"^ = (.+) = $")
    calib_titles = {title.match(d.split("\n", 1)[0]).group(1) for d in calib}
    test_titles = {title.match(d.split("\n", 1)[0]).group(1) for d in test}
    assert len(calib_titles) == len(calib) > 50 and len(test_titles) == len(test) > 10
    assert not calib_titles & test_titles
    assert not set(calib) & set(test)


def test_builtin_files_match_their_readme():
    readme = (REPO / "calib_data" / "README.md").read_text(encoding="utf-8")
    for name in data.BUILTIN_FILES.values():
        digest = hashlib.sha256((REPO / "calib_data" / name).read_bytes()).hexdigest()
        assert f"`{name}`" in readme and digest in readme, f"{name} is stale vs README"


def fake_datasets(load_dataset) -> types.ModuleType:
    mod = types.ModuleType("datasets")
    mod.load_dataset = load_dataset
    return mod


@pytest.mark.parametrize("source", ["wikitext2", "c4"])
def test_hub_failure_is_a_user_error(monkeypatch, source):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(offline))
    with pytest.raises(UserError, match="cannot be reached.*--calib builtin"):
        data.load_split(source, "calib")


class FakeDataset:
    """Just what data.py reads from a datasets.Dataset."""

    def __init__(self, texts):
        self.texts = texts
        self.info = types.SimpleNamespace(download_checksums={
            "hf://datasets/allenai/c4@" + "ab" * 20 + "/en/x.json.gz": {}})
        self.cache_files = []

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, key):
        return list(self.texts) if key == "text" else {"text": self.texts[key]}


def test_hub_sources_use_the_gptq_files(monkeypatch):
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return FakeDataset(["a", "b"])
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(load_dataset))
    data.load_split("wikitext2", "test")
    _, meta = data.load_split_with_meta("c4", "calib")
    data.load_split("c4", "test")
    assert calls[0] == (("wikitext", "wikitext-2-raw-v1"), {"split": "test"})
    assert calls[1][1]["data_files"] == {"train": "en/c4-train.00000-of-01024.json.gz"}
    assert calls[2][1]["data_files"] == {
        "validation": "en/c4-validation.00000-of-00008.json.gz"}
    assert meta["revision"] == "ab" * 20


# ----------------------------------------------------------------------------- calibration

def test_calibration_windows_are_seeded(tok, txt_file):
    a = data.calibration_windows(tok, str(txt_file), nsamples=6, seqlen=16, seed=1)
    b = data.calibration_windows(tok, str(txt_file), nsamples=6, seqlen=16, seed=1)
    c = data.calibration_windows(tok, str(txt_file), nsamples=6, seqlen=16, seed=2)
    assert a.shape == (6, 16) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_calibration_windows_do_not_touch_global_rng(tok, txt_file):
    random.seed(0)
    torch.manual_seed(0)
    expected = (random.random(), torch.rand(1))
    random.seed(0)
    torch.manual_seed(0)
    data.calibration_windows(tok, str(txt_file), nsamples=3, seqlen=16, seed=5)
    assert (random.random(), torch.rand(1)) == expected


def _contains(seq: list[int], window: list[int]) -> bool:
    return any(seq[i:i + len(window)] == window for i in range(len(seq) - len(window) + 1))


def test_calibration_windows_come_from_one_calib_document(tok, txt_file):
    calib = [data.encode(tok, d) for d in data.load_split(str(txt_file), "calib")]
    test = [data.encode(tok, d) for d in data.load_split(str(txt_file), "test")]
    for w in data.calibration_windows(tok, str(txt_file), 8, 24, seed=0).tolist():
        assert any(_contains(ids, w) for ids in calib)
        assert not any(_contains(ids, w) for ids in test)


def test_short_documents_are_joined(tok, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("\n\n".join(make_docs(30, 3)), encoding="utf-8")
    stream = data.encode(tok, "\n\n".join(data.load_split(str(path), "calib")))
    windows = data.calibration_windows(tok, str(path), 4, 40, seed=0)
    assert windows.shape == (4, 40)
    for w in windows.tolist():
        assert _contains(stream, w)


def test_too_little_text_is_a_user_error(tok, tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("one doc\n\nanother doc", encoding="utf-8")
    with pytest.raises(UserError, match="fewer than one window"):
        data.calibration_windows(tok, str(path), 2, 512, seed=0)
    with pytest.raises(UserError, match="nsamples"):
        data.calibration_windows(tok, str(path), 0, 8, seed=0)


def test_builtin_calibration_windows(tok):
    w = data.calibration_windows(tok, "builtin", nsamples=2, seqlen=32, seed=0)
    assert w.shape == (2, 32) and int(w.max()) < len(tok)


def test_random_calibration_is_seeded_token_ids_without_text(tok):
    a = data.calibration_windows(tok, "random", nsamples=3, seqlen=64, seed=1)
    assert a.shape == (3, 64) and a.dtype == torch.long
    assert 0 <= int(a.min()) and int(a.max()) < len(tok)
    assert torch.equal(a, data.calibration_windows(tok, " Random ", 3, 64, seed=1))
    assert not torch.equal(a, data.calibration_windows(tok, "random", 3, 64, seed=2))
    assert not data.is_local_source("random")


def test_random_source_has_nothing_to_evaluate(tok):
    with pytest.raises(UserError, match="calibration source only"):
        data.eval_windows(tok, "random", seqlen=32)


# ----------------------------------------------------------------------------- evaluation

def test_eval_windows_follow_the_gptq_protocol(tok, txt_file):
    seqlen = 20
    windows, meta = data.eval_windows(tok, str(txt_file), seqlen, split="test")
    ids = data.encode(tok, "\n\n".join(data.load_split(str(txt_file), "test")))
    n = len(ids) // seqlen
    assert len(ids) % seqlen != 0, "pick sizes that leave a tail to drop"
    assert windows.shape == (n, seqlen)
    assert windows.flatten().tolist() == ids[: n * seqlen]     # non-overlapping, tail dropped
    assert meta["n_windows"] == meta["total_windows"] == n and meta["partial"] is False
    assert meta["split"] == "test" and meta["seqlen"] == seqlen
    assert meta["revision"] == "sha256:" + hashlib.sha256(txt_file.read_bytes()).hexdigest()

    part, pmeta = data.eval_windows(tok, str(txt_file), seqlen, max_windows=2, split="test")
    assert torch.equal(part, windows[:2]) and pmeta["partial"] is True
    assert pmeta["total_windows"] == n


def test_a_local_file_is_scored_whole_by_default(tok, txt_file):
    """The 90/10 split belongs to calibration: evaluating a user's file scores all of it."""
    seqlen = 20
    windows, meta = data.eval_windows(tok, str(txt_file), seqlen)
    ids = data.encode(tok, "\n\n".join(make_docs(40, 60)))
    assert windows.flatten().tolist() == ids[: (len(ids) // seqlen) * seqlen]
    assert meta["split"] == "all" and meta["documents"] == meta["documents_in_file"] == 40
    assert meta["n_windows"] == len(ids) // seqlen and meta["source"] == str(txt_file.resolve())
    assert "split_rule" not in meta
    test_w, test_meta = data.eval_windows(tok, str(txt_file), seqlen, split="test")
    assert test_meta["split"] == "test" and test_meta["documents"] < 40 // 2
    assert test_meta["n_windows"] < meta["n_windows"] and "split_rule" in test_meta


def test_split_all_is_refused_for_named_sources(tok):
    _, meta = data.eval_windows(tok, "builtin", 64, max_windows=1)
    assert meta["split"] == "test" and meta["source"] == "calib_data/wiki_test.txt"
    with pytest.raises(UserError, match="--split all applies to a local file"):
        data.eval_windows(tok, "builtin", 64, split="all")
    with pytest.raises(UserError, match="--split must be one of all, test"):
        data.eval_windows(tok, "builtin", 64, split="calib")


def test_a_one_document_file_can_be_scored_whole(tok, tmp_path):
    path = tmp_path / "one.txt"
    path.write_text(" ".join(WORDS * 5), encoding="utf-8")
    windows, meta = data.eval_windows(tok, str(path), 8)
    assert meta["documents"] == 1 and windows.shape[0] >= 1
    with pytest.raises(UserError, match="needs at least 2"):
        data.eval_windows(tok, str(path), 8, split="test")


def test_eval_windows_never_add_special_tokens(tok, txt_file):
    windows, _ = data.eval_windows(tok, str(txt_file), 16)
    assert tok.bos_token_id not in windows.flatten().tolist()


def test_c4_eval_takes_256_seeded_windows_from_long_documents(tok, monkeypatch):
    docs = make_docs(50, 4) + make_docs(10, 80, seed=1)
    monkeypatch.setitem(sys.modules, "datasets",
                        fake_datasets(lambda *a, **k: FakeDataset(docs)))
    seqlen = 32
    windows, meta = data.eval_windows(tok, "c4", seqlen, seed=0)
    again, _ = data.eval_windows(tok, "c4", seqlen, seed=0)
    other, _ = data.eval_windows(tok, "c4", seqlen, seed=1)
    assert windows.shape == (256, seqlen) and meta["partial"] is False
    assert torch.equal(windows, again) and not torch.equal(windows, other)
    long_docs = [data.encode(tok, d) for d in docs if len(data.encode(tok, d)) > seqlen]
    assert all(any(_contains(ids, w) for ids in long_docs) for w in windows[:20].tolist())
    part, pmeta = data.eval_windows(tok, "c4", seqlen, max_windows=8, seed=0)
    assert torch.equal(part, windows[:8]) and pmeta["partial"] is True


# ----------------------------------------------------------------------------- build script

def _build_script():
    spec = importlib.util.spec_from_file_location(
        "build_calib_data", REPO / "scripts" / "build_calib_data.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)      # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def test_markup_is_stripped_wikitext_style():
    mw = pytest.importorskip("mwparserfromhell")
    build = _build_script()
    src = ("{{Infobox thing|name=X}}\n'''Foo''' is a [[bar (thing)|bar]] of "
           "{{convert|3|km}}.<ref>Cited, p. 3.</ref> See [[File:a.png|thumb|pic]] it.\n"
           "== History ==\nIt began.<!-- hidden --> [[Category:Things]] [[de:Foo]]\n"
           "{| class=wikitable\n| cell || cell\n|}\n=== Empty ===\n{{stub}}\n"
           "== References ==\n{{reflist}}\nSome citation text here.\n")
    assert build.wikitext_to_plain("Foo", src, mw) == (
        " = Foo = \nFoo is a bar of 3 km. See it.\n = = History = = \nIt began.")
    assert build.wikitext_to_plain("Foo (disambiguation)", "x", mw) is None
    assert build.is_test("A Modest Proposal") and not build.is_test("Alabama")
