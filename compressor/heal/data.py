"""Heal's training data: windows from the calibration split (never the evaluation split), kept
disjoint from the compression calibration windows where that is cheap, and the teacher's
next-token distribution cached as top-k log-probabilities plus one tail bucket.

Disjointness. The compression windows are token sequences; a document (or, for text sampled as
one joined stream, a stretch of that stream) holding one of them is never drawn from. Only the
documents actually drawn are tokenized, so a large hub shard costs what is sampled.

Teacher cache. Computed on the original model before the sequential pass changes it in place:
per window (seqlen, k) fp32 log-probs + (seqlen, k) int32 token ids + (seqlen,) fp32 tail
log-prob, i.e. seqlen·(8k+4) bytes a window: 128 windows × 2048 tokens at k=64 is 135 MB for
any model size, against a second resident model (13.5 GB for a 7B in bf16) to compute it on
the fly. Its cost is one forward pass over the windows.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.data import encode, load_split_with_meta

# ----------------------------------------------------------------------------- windows

def _find_all(hay: bytes, needle: bytes) -> list[int]:
    """Token offsets where ``needle`` occurs in ``hay`` (both int32 token bytes)."""
    out, i = [], hay.find(needle)
    while i != -1:
        if i % 4 == 0:
            out.append(i // 4)
        i = hay.find(needle, i + 1)
    return out


def _as_bytes(ids) -> bytes:
    return np.asarray(ids, dtype=np.int32).tobytes()


def heal_windows(tokenizer, source: str, nsamples: int, seqlen: int, seed: int,
                 avoid: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """``nsamples`` seeded windows of ``seqlen`` tokens from the calibration split of
    ``source``, sharing no token position with the windows in ``avoid`` (n, L).

    Returns (windows, info); info["windows"] is "disjoint", or "calibration" with a reason
    when the text is too small, in which case the calibration windows themselves are used
    (cut or cycled to ``nsamples`` × ``seqlen``).
    """
    docs, meta = load_split_with_meta(source, "calib")
    rng = random.Random(f"svdc-heal:{seed}")
    needles = [_as_bytes(w) for w in avoid.tolist()]
    picked: list[list[int]] | None = None
    excluded_docs = 0
    if meta.get("dataset") != "wikitext2" and len(docs):
        picked, excluded_docs = _from_documents(tokenizer, docs, nsamples, seqlen, rng, needles)
    mode = "documents"
    if picked is None:
        picked = _from_stream(tokenizer, docs, nsamples, seqlen, rng, needles)
        mode = "stream"
    info: dict[str, Any] = {"source": source, "split": "calib", "nsamples": nsamples,
                            "seqlen": seqlen}
    if picked is None:
        info.update(windows="calibration",
                    reason=f"the calibration text holds fewer than {nsamples} windows of "
                           f"{seqlen} tokens disjoint from the compression windows")
        out = calibration_fallback(avoid, nsamples, seqlen)
        info["seqlen"] = int(out.shape[1])
        return out, info
    info.update(windows="disjoint", sampled_from=mode, skipped_documents=excluded_docs)
    return torch.tensor(picked, dtype=torch.long), info


def calibration_fallback(windows: torch.Tensor, nsamples: int, seqlen: int) -> torch.Tensor:
    """The compression windows (their first ``seqlen`` tokens), cycled to ``nsamples`` rows."""
    rows = windows[:, :seqlen]
    return rows[torch.arange(nsamples) % rows.shape[0]].clone()


def _from_documents(tokenizer, docs, n: int, seqlen: int, rng: random.Random,
                    needles: list[bytes]) -> tuple[list[list[int]] | None, int]:
    """GPTQ-style: a random long-enough document not holding a compression window, a random
    window inside it; windows never repeat. None when the documents run out."""
    cache: dict[int, list[int]] = {}
    bad: set[int] = set()
    excluded = 0
    seen: set[tuple[int, int]] = set()
    out: list[list[int]] = []
    tries = 0
    while len(out) < n:
        if len(bad) == len(docs) or tries > 50 * n + 1000:
            return None, excluded
        tries += 1
        i = rng.randrange(len(docs))
        if i in bad:
            continue
        ids = cache.get(i)
        if ids is None:
            ids = encode(tokenizer, docs[i])
            if len(ids) < seqlen:
                bad.add(i)
                continue
            hay = _as_bytes(ids)
            if any(_find_all(hay, nd) for nd in needles):
                bad.add(i)
                excluded += 1
                continue
            cache[i] = ids
        start = rng.randrange(len(ids) - seqlen + 1)
        if (i, start) in seen:
            continue
        seen.add((i, start))
        out.append(ids[start:start + seqlen])
    return out, excluded


def _from_stream(tokenizer, docs, n: int, seqlen: int, rng: random.Random,
                 needles: list[bytes]) -> list[list[int]] | None:
    """Random windows of all documents joined with "\\n\\n", none overlapping the token span
    of a compression window in that stream. None when there is no room."""
    ids = encode(tokenizer, "\n\n".join(docs))
    if len(ids) < seqlen:
        return None
    hay = _as_bytes(ids)
    spans = sorted((s, s + len(nd) // 4) for nd in needles for s in _find_all(hay, nd))
    blocked = np.zeros(len(ids) + 1, dtype=np.int64)   # prefix count of blocked positions
    mask = np.zeros(len(ids), dtype=bool)
    for s, e in spans:
        mask[s:e] = True
    blocked[1:] = np.cumsum(mask)
    starts = [s for s in range(len(ids) - seqlen + 1) if blocked[s + seqlen] == blocked[s]]
    if len(starts) < n:
        return None
    chosen = rng.sample(starts, n)
    return [ids[s:s + seqlen] for s in chosen]


# ----------------------------------------------------------------------------- teacher

@dataclass
class TeacherCache:
    """The teacher's next-token distribution per position: top-k log-probs and ids, and the
    log-probability of everything else (the tail bucket)."""

    logp: torch.Tensor      # (n, seqlen, k) float32
    index: torch.Tensor     # (n, seqlen, k) int32
    tail: torch.Tensor      # (n, seqlen)    float32: log(1 - sum of the top-k probabilities)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.logp, self.index, self.tail))

    def window(self, i: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.logp[i].to(device), self.index[i].to(device=device, dtype=torch.long),
                self.tail[i].to(device))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"logp": self.logp, "index": self.index, "tail": self.tail}


def topk_with_tail(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(T, V) logits → top-k log-probs (T, k) fp32, their ids (T, k), tail log-prob (T,)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    k = min(k, logp.shape[-1])
    vals, idx = logp.topk(k, dim=-1)
    if k == logp.shape[-1]:
        tail = torch.full(vals.shape[:-1], float("-inf"), dtype=torch.float32, device=logp.device)
    else:
        tail = logp.scatter(-1, idx, float("-inf")).logsumexp(-1)
    return vals, idx, tail


@torch.no_grad()
def teacher_topk(model: nn.Module, windows: torch.Tensor, k: int, device: torch.device,
                 progress: Callable[[int, int], None] | None = None) -> TeacherCache:
    """One forward pass of the (uncompressed) model per window, batch 1; the model must sit on
    ``device`` already. Returns the cache on the CPU."""
    was_training = model.training
    model.eval()
    n, seqlen = windows.shape
    logps, idxs, tails = [], [], []
    try:
        for i in range(n):
            logits = model(input_ids=windows[i:i + 1].to(device), use_cache=False).logits[0]
            v, ix, t = topk_with_tail(logits, k)
            logps.append(v.cpu())
            idxs.append(ix.to(torch.int32).cpu())
            tails.append(t.cpu())
            del logits
            if progress is not None:
                progress(i + 1, n)
    finally:
        model.train(was_training)
    return TeacherCache(torch.stack(logps), torch.stack(idxs), torch.stack(tails))
