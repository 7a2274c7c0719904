"""Perplexity, GPTQ protocol: exp(total NLL / scored tokens) over non-overlapping windows.

Written once and reused by ``svdc eval``, the benchmarks and the tests, so every number in a
report is computed the same way. No UI here: the CLI passes ``progress(done, total)``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from compressor.data import eval_windows
from compressor.errors import UserError

Progress = Callable[[int, int], None]
log = logging.getLogger("svdc")

_CE_CHUNK = 1024      # positions per cross-entropy call: bounds the fp32 copy of the logits


def _window_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of a batch, in fp32 per chunk, accumulated in fp64."""
    targets = ids[:, 1:]
    total = torch.zeros((), dtype=torch.float64, device=logits.device)
    for s in range(0, targets.shape[1], _CE_CHUNK):
        chunk = logits[:, s:s + _CE_CHUNK][:, : targets.shape[1] - s].float()
        nll = F.cross_entropy(chunk.reshape(-1, chunk.shape[-1]),
                              targets[:, s:s + _CE_CHUNK].reshape(-1), reduction="sum")
        total = total + nll.double()
    return total


def check_windows(windows: torch.Tensor, batch_size: int) -> None:
    if windows.ndim != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        raise ValueError(f"windows must be (n >= 1, seqlen >= 2), got {tuple(windows.shape)}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}.")


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, device: str | torch.device = "cpu",
               batch_size: int = 1, progress: Progress | None = None) -> dict:
    """Perplexity of ``model`` on token windows (n, seqlen); every position but the first is
    scored once, so scored tokens = n·(seqlen−1).

    ``model`` must already sit on ``device`` (or be dispatched); windows are moved batch by batch.
    Raises UserError when the loss is not finite (typically fp16 overflow) instead of
    reporting NaN.
    """
    check_windows(windows, batch_size)
    was_training = model.training
    model.eval()
    n, seqlen = windows.shape
    total = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for start in range(0, n, batch_size):
            ids = windows[start:start + batch_size].to(device)
            logits = model(input_ids=ids, use_cache=False).logits
            if not torch.isfinite(logits).all():
                raise UserError("the model's logits are not finite (inf or NaN): its weights are "
                                "corrupt or overflow this dtype; evaluate in float32 (--dtype "
                                "float32) or re-create the checkpoint")
            total = total + _window_nll(logits, ids).to(total.device)
            del logits
            if progress is not None:
                progress(min(start + batch_size, n), n)
    finally:
        model.train(was_training)
    nll = float(total)
    tokens = n * (seqlen - 1)
    if not math.isfinite(nll) or nll / tokens > 700:   # exp() of more overflows a float
        raise UserError(f"the model's loss is not finite ({nll}) on these windows: its logits "
                        f"overflowed or hold NaN. Evaluate in float32 (--dtype float32) or "
                        f"check the compressed weights.")
    return {"ppl": math.exp(nll / tokens), "nll": nll, "mean_nll": nll / tokens,
            "scored_tokens": tokens, "n_windows": n, "batch_size": batch_size}


def _model_dtype(model) -> str:
    dtype = getattr(model, "dtype", None)
    if dtype is None:
        dtype = next((p.dtype for p in model.parameters()), None)
    return str(dtype).replace("torch.", "")


def evaluate(model, tokenizer, dataset: str, seqlen: int, max_windows: int | None = None,
             device: str | torch.device = "cpu", progress: Progress | None = None,
             batch_size: int = 1, split: str | None = None) -> dict:
    """One perplexity result with everything needed to reproduce it (README, Evaluate).

    ``split``: see :func:`compressor.data.eval_windows` (default: a local file whole, a named
    source's test split)."""
    requested = seqlen
    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_pos is not None and seqlen > max_pos:
        seqlen = int(max_pos)
        log.warning("eval windows shortened from %d to the model's context, %d tokens "
                    "(the result records both)", requested, seqlen)
    windows, meta = eval_windows(tokenizer, dataset, seqlen, max_windows=max_windows, split=split)
    t0 = time.perf_counter()
    run = perplexity
    from compressor.checkpoint.stream_load import streamed_layers
    if streamed_layers(model) is not None:   # compressor.load(stream=True): layer-major
        from compressor.evaluate_stream import streamed_perplexity as run
    result = run(model, windows, device, batch_size=batch_size, progress=progress)
    elapsed = time.perf_counter() - t0
    out = {**meta, **result, "seqlen_requested": requested, "dtype": _model_dtype(model),
           "device": str(device), "elapsed_s": round(elapsed, 3)}
    out["label"] = (f"partial ({meta['n_windows']}/{meta['total_windows']} windows)"
                    if meta["partial"] else "full")
    return out
