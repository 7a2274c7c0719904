"""Text sources and token windows for calibration and evaluation, seeded and reproducible.

Sources (``--calib`` / ``--dataset``):

- ``builtin``: real Wikipedia text shipped in the repository (``calib_data/``, see its README),
  split by article into calibration and test files; works without network.
- ``wikitext2``: WikiText-2 raw from the Hugging Face Hub (train / test), GPTQ protocol.
- ``c4``: the two allenai/c4 English shards GPTQ uses (train 00000, validation 00000).
- a local ``.txt`` file (documents separated by blank lines) or ``.jsonl`` (one object per
  line with a ``"text"`` field). For calibration a local file is split by document, 90%
  calibration / 10% test, by a fixed hash of each document's text, so that calibrating and
  evaluating on the same file never share a document. Evaluation scores the whole file
  (split ``all``) unless asked for its ``test`` share (``svdc eval --split test``; ``compress``
  does so by itself when it evaluates on its calibration file).

Every random choice uses a ``random.Random(seed)`` made here, never the global RNG.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from compressor.errors import UserError

HUB_SOURCES = ("wikitext2", "c4")
RANDOM_SOURCE = "random"         # seeded uniform token ids: calibration without any text
NAMED_SOURCES = ("builtin", *HUB_SOURCES, RANDOM_SOURCE)
SPLITS = ("calib", "test", "all")     # "all": a local file's every document (evaluation only)
EVAL_SPLITS = ("all", "test")
LOCAL_TEST_PERCENT = 10
C4_EVAL_WINDOWS = 256            # GPTQ protocol: 256 seeded windows from the validation shard
BUILTIN_FILES = {"calib": "wiki_calib.txt", "test": "wiki_test.txt"}
C4_FILES = {"calib": ("train", "en/c4-train.00000-of-01024.json.gz"),
            "test": ("validation", "en/c4-validation.00000-of-00008.json.gz")}
WIKITEXT_SPLITS = {"calib": "train", "test": "test"}
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


# ----------------------------------------------------------------------------- sources

def builtin_dir() -> Path:
    """calib_data/ beside the package (source checkout, editable install), else the copy a
    regular install puts in <prefix>/share/svdc/calib_data (pyproject data-files)."""
    import sys
    here = Path(__file__).resolve().parent.parent / "calib_data"
    installed = Path(sys.prefix) / "share" / "svdc" / "calib_data"
    return here if here.is_dir() or not installed.is_dir() else installed


def load_split(source: str, split: str) -> list[str]:
    """Documents of ``source`` for ``split`` ("calib" or "test")."""
    docs, _ = load_split_with_meta(source, split)
    return list(docs)


def is_local_source(source: str) -> bool:
    """A path to a .txt/.jsonl file (existing or not), as opposed to a named source."""
    return source.strip().lower() not in NAMED_SOURCES


def is_random_source(source: str) -> bool:
    """``random``: seeded token ids, a calibration source with no documents."""
    return source.strip().lower() == RANDOM_SOURCE


def default_eval_split(source: str) -> str:
    """What evaluation scores when not told: a local file whole, a named source's test split."""
    return "all" if is_local_source(source) else "test"


def load_split_with_meta(source: str, split: str) -> tuple[Sequence[str], dict]:
    """Documents plus where they came from (dataset, split, source, revision) for reports."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    key = source.strip().lower()
    if is_random_source(key):
        raise UserError("'random' (uniform token ids) has no documents: it is a calibration "
                        "source only; evaluate or heal on builtin, wikitext2, c4 or a text file.")
    if split == "all" and key in NAMED_SOURCES:
        raise UserError(f"--split all applies to a local file; {key} is scored on its held-out "
                        f"test split (use --split test, or leave --split out).")
    if key == "builtin":
        return _load_builtin(split)
    if key == "wikitext2":
        return _load_wikitext2(split)
    if key == "c4":
        return _load_c4(split)
    path = Path(source).expanduser()
    if path.suffix.lower() in (".txt", ".jsonl") and path.is_file():
        return _load_local(path, split)
    if path.suffix.lower() in (".txt", ".jsonl"):
        raise UserError(f"text file {str(path)!r} not found: check the path.")
    raise UserError(f"unknown text source {source!r}: use one of {', '.join(NAMED_SOURCES)}, "
                    f"or a path to a local .txt (blank-line separated documents) or .jsonl "
                    f"(\"text\" field) file.")


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): "
                        f"convert it to UTF-8.") from None


def split_documents(text: str) -> list[str]:
    """Blank-line separated documents; inner lines (and their leading spaces) are kept."""
    return [d.strip("\n") for d in _BLANK_LINE.split(text) if d.strip()]


def _load_builtin(split: str) -> tuple[list[str], dict]:
    path = builtin_dir() / BUILTIN_FILES[split]
    if not path.is_file():
        raise UserError(f"the builtin corpus is missing ({path}): it ships with the source "
                        f"repository; rebuild it with `python scripts/build_calib_data.py`, or "
                        f"use --calib wikitext2|c4|PATH.")
    docs = split_documents(_read_text(path))
    meta = {"dataset": "builtin", "split": split, "source": f"calib_data/{path.name}",
            "revision": "sha256:" + _sha256_file(path)}
    return docs, meta


def _split_by_hash(docs: list[str], test_percent: int) -> dict[str, list[str]]:
    """Deterministic document-level split; each side gets at least one document."""
    keys = [int.from_bytes(hashlib.sha256(d.encode("utf-8")).digest()[:8], "big") for d in docs]
    is_test = [k % 100 < test_percent for k in keys]
    if len(docs) >= 2 and not any(is_test):
        is_test[min(range(len(docs)), key=lambda i: (keys[i] % 100, keys[i]))] = True
    if len(docs) >= 2 and all(is_test):
        is_test[max(range(len(docs)), key=lambda i: (keys[i] % 100, keys[i]))] = False
    return {"test": [d for d, t in zip(docs, is_test) if t],
            "calib": [d for d, t in zip(docs, is_test) if not t]}


def _read_jsonl(path: Path) -> list[str]:
    docs = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno} is not valid JSON ({e.msg}).") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise UserError(f"{path}:{lineno}: each line must be an object with a string "
                            f"\"text\" field.")
        if obj["text"].strip():
            docs.append(obj["text"])
    return docs


def _load_local(path: Path, split: str) -> tuple[list[str], dict]:
    all_docs = _read_jsonl(path) if path.suffix.lower() == ".jsonl" \
        else split_documents(_read_text(path))
    if not all_docs:
        raise UserError(f"{path} holds no text.")
    if len(all_docs) < 2 and split != "all":
        raise UserError(f"{path} holds {len(all_docs)} document(s); a local file is split by "
                        f"document into calibration and test, so it needs at least 2 "
                        f"(separate documents by a blank line, or one JSON object per line).")
    meta = {"dataset": path.name, "split": split, "source": str(path.resolve()),
            "revision": "sha256:" + _sha256_file(path), "documents_in_file": len(all_docs)}
    if split == "all":
        return all_docs, meta
    docs = _split_by_hash(all_docs, LOCAL_TEST_PERCENT)[split]
    meta["split_rule"] = f"sha256(document) % 100 < {LOCAL_TEST_PERCENT} -> test"
    return docs, meta


def _hub_load(label: str, *args, **kwargs):
    """datasets.load_dataset, turning 'no network' into a one-line UserError."""
    try:
        import datasets
    except ImportError:
        raise UserError(f"--calib/--dataset {label} needs the `datasets` package: "
                        f"pip install datasets, or use builtin / a local file.") from None
    try:
        return datasets.load_dataset(*args, **kwargs)
    except (OSError, TimeoutError) as e:   # ConnectionError, HTTP errors, missing cache
        raise UserError(f"cannot load {label} because the Hugging Face Hub cannot be reached "
                        f"({type(e).__name__}: {str(e)[:120]}); use `--calib builtin` (or "
                        f"`--dataset builtin`) or a local .txt/.jsonl file instead.") from None


def _hub_revision(ds) -> str:
    """Best effort: the commit sha in the resolved data file URLs, else 'unknown'."""
    blobs = [str(getattr(ds.info, "download_checksums", None) or "")]
    blobs += [str(f.get("filename", "")) for f in getattr(ds, "cache_files", None) or []]
    for blob in blobs:
        m = re.search(r"@([0-9a-f]{40})", blob)
        if m:
            return m.group(1)
    return "unknown"


class _Column(Sequence):
    """Lazy view of a dataset's text column: C4 shards are too big to copy into a list."""

    def __init__(self, ds, field: str = "text"):
        self._ds, self._field = ds, field

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._ds[i][self._field]


def _load_wikitext2(split: str) -> tuple[list[str], dict]:
    hf_split = WIKITEXT_SPLITS[split]
    ds = _hub_load("wikitext2", "wikitext", "wikitext-2-raw-v1", split=hf_split)
    meta = {"dataset": "wikitext2", "split": hf_split, "source": "wikitext/wikitext-2-raw-v1",
            "revision": _hub_revision(ds)}
    return list(ds["text"]), meta          # rows (paragraph lines), as GPTQ joins them


def _load_c4(split: str) -> tuple[Sequence[str], dict]:
    hf_split, file = C4_FILES[split]
    ds = _hub_load("c4", "allenai/c4", data_files={hf_split: file}, split=hf_split)
    meta = {"dataset": "c4", "split": hf_split, "source": f"allenai/c4/{file}",
            "revision": _hub_revision(ds)}
    return _Column(ds), meta


# ----------------------------------------------------------------------------- windows

def encode(tokenizer, text: str) -> list[int]:
    """Token ids without special tokens (the GPTQ protocol scores raw text)."""
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _check_sizes(nsamples: int, seqlen: int) -> None:
    if nsamples < 1:
        raise UserError(f"--nsamples must be at least 1, got {nsamples}.")
    if seqlen < 2:
        raise UserError(f"--seqlen must be at least 2 tokens, got {seqlen}.")


def _sample_from_documents(tokenizer, docs: Sequence[str], n: int, seqlen: int,
                           rng: random.Random, min_tokens: int) -> list[list[int]] | None:
    """GPTQ sampling: random document with >= min_tokens tokens, random window inside it.

    Returns None when no document is long enough (the caller then joins documents).
    Documents are tokenized lazily and cached, so a huge shard costs only what is drawn.
    """
    cache: dict[int, list[int]] = {}
    short: set[int] = set()
    windows: list[list[int]] = []
    while len(windows) < n:
        if len(short) == len(docs):
            return None
        i = rng.randrange(len(docs))
        if i in short:
            continue
        ids = cache.get(i)
        if ids is None:
            ids = encode(tokenizer, docs[i])
            if len(ids) < min_tokens:
                short.add(i)
                continue
            cache[i] = ids
        start = rng.randrange(len(ids) - seqlen + 1)
        windows.append(ids[start:start + seqlen])
    return windows


def _sample_from_stream(ids: list[int], n: int, seqlen: int,
                        rng: random.Random) -> list[list[int]]:
    starts = [rng.randrange(len(ids) - seqlen + 1) for _ in range(n)]
    return [ids[s:s + seqlen] for s in starts]


def random_windows(vocab_size: int, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """Uniform token ids (no text): what data-free methods calibrate on (``--calib random``).
    They show the model's own input scales per channel, which its weights alone do not."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (nsamples, seqlen), generator=gen, dtype=torch.long)


def calibration_windows(tokenizer, source: str, nsamples: int, seqlen: int,
                        seed: int) -> torch.Tensor:
    """``nsamples`` seeded random windows of ``seqlen`` tokens from the calibration split.

    GPTQ style: each window comes from a random document long enough to hold it. WikiText-2
    rows are paragraphs (never that long), so there, and whenever no document is long enough,
    windows are cut at random from all documents joined with "\\n\\n".
    """
    _check_sizes(nsamples, seqlen)
    if is_random_source(source):
        return random_windows(len(tokenizer), nsamples, seqlen, seed)
    docs, meta = load_split_with_meta(source, "calib")
    if len(docs) == 0:
        raise UserError(f"calibration source {source!r} has no documents.")
    rng = random.Random(seed)
    windows = None
    if meta["dataset"] != "wikitext2":
        windows = _sample_from_documents(tokenizer, docs, nsamples, seqlen, rng, seqlen)
    if windows is None:
        ids = encode(tokenizer, "\n\n".join(docs))
        if len(ids) < seqlen:
            raise UserError(f"calibration text {source!r} has only {len(ids)} tokens, fewer "
                            f"than one window of --seqlen {seqlen}: lower --seqlen or use a "
                            f"larger source.")
        windows = _sample_from_stream(ids, nsamples, seqlen, rng)
    return torch.tensor(windows, dtype=torch.long)


def eval_windows(tokenizer, source: str, seqlen: int, max_windows: int | None = None,
                 seed: int = 0, split: str | None = None) -> tuple[torch.Tensor, dict]:
    """Evaluation windows (n, seqlen) and their provenance, GPTQ protocol (README, Evaluate).

    ``split``: ``all`` (a local file's every document; the default for a local file) or
    ``test`` (the held-out split; the default and only choice for builtin, wikitext2, c4).
    The documents are joined with "\\n\\n", tokenized once without special tokens, cut into
    non-overlapping windows, tail dropped. C4: 256 seeded windows from validation documents
    longer than ``seqlen``. ``max_windows`` keeps the first windows only and marks the result
    partial (its perplexity is not the protocol's number). The metadata says what was scored:
    dataset, source file, split, documents, windows.
    """
    if seqlen < 2:
        raise UserError(f"--seqlen must be at least 2 tokens, got {seqlen}.")
    if max_windows is not None and max_windows < 1:
        raise UserError(f"--max-windows must be at least 1, got {max_windows}.")
    split = default_eval_split(source) if split is None else split
    if split not in EVAL_SPLITS:
        raise UserError(f"--split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}.")
    docs, meta = load_split_with_meta(source, split)
    meta["documents"] = len(docs)
    if meta["dataset"] == "c4":
        total = C4_EVAL_WINDOWS
        n = total if max_windows is None else min(total, max_windows)
        picked = _sample_from_documents(tokenizer, docs, n, seqlen, random.Random(seed),
                                        seqlen + 1)
        if picked is None:
            raise UserError(f"no c4 validation document is longer than --seqlen {seqlen}.")
        windows = torch.tensor(picked, dtype=torch.long)
        meta["seed"] = seed
    else:
        ids = torch.tensor(encode(tokenizer, "\n\n".join(docs)), dtype=torch.long)
        total = ids.numel() // seqlen
        if total == 0:
            raise UserError(f"the {meta['dataset']} {split} text has {ids.numel()} tokens, fewer "
                            f"than one window of --seqlen {seqlen}: lower --seqlen.")
        n = total if max_windows is None else min(total, max_windows)
        windows = ids[: n * seqlen].view(n, seqlen)
        meta["total_tokens"] = ids.numel()
    meta.update(seqlen=seqlen, n_windows=n, total_windows=total, partial=n < total,
                tokenizer=tokenizer_name(tokenizer))
    return windows, meta
