"""Gradient statistics (Fisher, mean |gradient|) of target linear weights, on the original model.

Methods such as FWSVD, GWQ and LQ-LoRA weight their errors by how much the loss cares about
each weight. That needs a backward pass through the *whole* model, so it runs once, before the
sequential layer-by-layer pass, on the original (uncompressed) model.

Scale. The loss of one sample is Hugging Face's next-token cross-entropy, a MEAN over that
sample's ``seqlen - 1`` predicted tokens. With g_s = ∂(mean loss of sample s)/∂W:

    fisher       = Σ_s g_s²          (a sum over samples, not a mean; grows with n)
    fisher_rows  = fisher summed over each row (out,), fisher_cols over each column (in,):
                   all FWSVD needs, without an (out, in) buffer (26 GB for a 7B model)
    grad_absmean = (1/n) Σ_s |g_s|

Memory stays bounded: batch 1, gradient checkpointing, only target weights require grad, and a
post-accumulate-grad hook folds each ``.grad`` into fp32 buffers and drops it at once, so at most
one gradient per parameter lives at a time and no optimizer-sized state is kept.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from compressor.errors import UserError

GRAD_STATS = frozenset({"fisher", "fisher_rows", "fisher_cols", "grad_absmean"})


FP16_LOSS_SCALE = 2.0 ** 14  # keeps ~1e-8 gradients in fp16's normal range, ~1e-2 far from 65504


Stats = dict[str, dict[str, torch.Tensor]]


def gradient_stats(model: nn.Module, windows: torch.Tensor, target_names: list[str],
                   want: set[str], device: torch.device | str,
                   progress: Callable[[int, int], None] | None = None,
                   ) -> tuple[Stats, dict[str, Any]]:
    """Per-target Fisher / mean-|grad| from one forward+backward per calibration window.

    ``windows`` (n, seqlen) token ids; each row is one sample (batch 1). ``progress(i, n)`` is
    called after sample i (1-based). Returns ``({name: {stat: (out, in) fp32 on CPU}}, info)``.
    The model is left as it was: requires_grad flags, train/eval modes, checkpointing state,
    its device, and every target ``.grad`` is None afterwards. Dropout is kept off (eval mode)
    so the statistics are deterministic; only the checkpointed blocks are put in training mode,
    which Hugging Face requires for checkpointing to engage.
    """
    want = set(want)
    unknown = want - GRAD_STATS
    if unknown:
        raise ValueError(f"unknown gradient statistics {sorted(unknown)}; known: {sorted(GRAD_STATS)}")
    windows = _check_windows(windows)
    device = torch.device(device)
    params = _target_params(model, target_names)
    n = windows.shape[0]
    if not want:
        return {name: {} for name in target_names}, {"nsamples": 0, "seconds": 0.0}

    # One buffer set per distinct Parameter (tied weights named twice share one).
    by_param: dict[int, tuple[nn.Parameter, list[str]]] = {}
    for name, p in params.items():
        by_param.setdefault(id(p), (p, []))[1].append(name)

    t0 = time.perf_counter()
    rss0 = _peak_rss_bytes()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_on_device(model, device))
        run_device = _input_device(model, device)
        if run_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(run_device)
        stack.enter_context(_only_targets_trainable(model, [p for p, _ in by_param.values()]))
        checkpointing = stack.enter_context(_checkpointing_eval(model))
        # fp16 cannot hold a 7B model's per-sample gradients (~1e-8 < 6e-8, its smallest
        # subnormal): scale the loss as mixed-precision training does, unscale in fp32.
        half = any(p.dtype == torch.float16 for p, _ in by_param.values())
        loss_scale = FP16_LOSS_SCALE if half else 1.0
        buffers, counts = _install_hooks(stack, by_param.values(), want, loss_scale)
        bad = torch.zeros((), dtype=torch.bool, device=run_device)
        ids_all = windows.to(run_device)
        for i in range(n):
            ids = ids_all[i:i + 1]
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            bad |= ~torch.isfinite(loss.detach())
            (loss * loss_scale).backward()
            if progress is not None:
                progress(i + 1, n)
        if run_device.type == "cuda":
            torch.cuda.synchronize(run_device)
        peak_cuda = (torch.cuda.max_memory_allocated(run_device)
                     if run_device.type == "cuda" else None)
        _check_counts(counts, by_param, n)
        out = _finalize(buffers, by_param, want, n, bool(bad))
    seconds = time.perf_counter() - t0

    info: dict[str, Any] = {
        "nsamples": n, "seqlen": int(windows.shape[1]), "seconds": round(seconds, 3),
        "gradient_checkpointing": checkpointing, "device": str(run_device),
        "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "stat_buffers_bytes": sum(t.numel() * 4 for d in buffers.values() for t in d.values()),
    }
    if peak_cuda is not None:
        info["peak_cuda_allocated_bytes"] = int(peak_cuda)
        info["memory_measure"] = "torch.cuda.max_memory_allocated over the pass"
    else:
        rss1 = _peak_rss_bytes()
        info["peak_rss_bytes"] = rss1
        info["peak_rss_delta_bytes"] = max(0, rss1 - rss0)
        info["memory_measure"] = ("process peak RSS (getrusage ru_maxrss); the delta is how far "
                                  "this pass raised the lifetime peak (0 if it stayed below it)")
    return out, info


def _check_windows(windows: torch.Tensor) -> torch.Tensor:
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.is_floating_point():
        raise UserError("gradient statistics need token windows as an integer tensor "
                        "(nsamples, seqlen); got "
                        f"{getattr(windows, 'shape', type(windows))}")
    if windows.shape[0] < 1 or windows.shape[1] < 2:
        raise UserError(f"gradient statistics need at least 1 window of at least 2 tokens; got "
                        f"{tuple(windows.shape)}: raise --nsamples / --seqlen")
    return windows.long()


def _target_params(model: nn.Module, names: list[str]) -> dict[str, nn.Parameter]:
    """Map each target name to its 2-D weight Parameter (nn.Linear, or a named embedding)."""
    if not names:
        raise UserError("gradient statistics were asked for no target layers; check the targets")
    out: dict[str, nn.Parameter] = {}
    for name in names:
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise UserError(f"no module named {name!r} in the model: the target list does not "
                            "belong to this model") from None
        w = getattr(mod, "weight", None)
        if not isinstance(w, nn.Parameter) or w.dim() != 2:
            raise UserError(f"{name!r} is a {type(mod).__name__} without a 2-D weight; gradient "
                            "statistics cover linear layers only")
        out[name] = w
    return out


def _input_device(model: nn.Module, device: torch.device) -> torch.device:
    """Where input ids must go: the embedding's device under a device_map, else ``device``."""
    if getattr(model, "hf_device_map", None) and hasattr(model, "get_input_embeddings"):
        return model.get_input_embeddings().weight.device
    return device


@contextlib.contextmanager
def _on_device(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run on ``device`` and move back after; a device_map-dispatched model is left in place."""
    first = next(model.parameters(), None)
    if first is None or getattr(model, "hf_device_map", None) or _same_device(first.device, device):
        yield
        return
    home = first.device
    model.to(device)
    try:
        yield
    finally:
        model.to(home)


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


@contextlib.contextmanager
def _only_targets_trainable(model: nn.Module, targets: list[nn.Parameter]) -> Iterator[None]:
    """Freeze everything but the targets, so no other gradient is ever computed; restore after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    ids = {id(p) for p in targets}
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in ids)
        for p in targets:
            p.grad = None  # a stale .grad would be folded into the first sample
        yield
    finally:
        for p in targets:
            p.grad = None
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def _checkpointing_eval(model: nn.Module) -> Iterator[bool]:
    """Eval mode (no dropout) with non-reentrant checkpointing on; yields whether it engaged.

    Hugging Face checkpoints a block only when that block is in training mode, so those blocks
    alone get ``training = True`` (their children, where dropout lives, stay in eval). All
    per-module modes, checkpointing attributes and input-grad hooks are restored afterwards.
    """
    modes = [(m, m.training) for m in model.modules()]
    gc_attrs = [(m, m.__dict__.get("gradient_checkpointing", _MISSING),
                 m.__dict__.get("_gradient_checkpointing_func", _MISSING))
                for m in model.modules() if hasattr(m, "gradient_checkpointing")]
    old_hooks = list(model.__dict__.get("_require_grads_hooks", []) or [])
    old_hook = model.__dict__.get("_require_grads_hook", _MISSING)
    engaged = False
    try:
        model.eval()
        if getattr(model, "supports_gradient_checkpointing", False):
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:  # transformers >= 5 (the old name warns there)
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False})
            for m in model.modules():
                if getattr(m, "gradient_checkpointing", False):
                    m.training = True  # not .train(): that would switch children's dropout on
                    engaged = True
        yield engaged
    finally:
        for h in model.__dict__.get("_require_grads_hooks", []) or []:
            if all(h is not o for o in old_hooks):
                h.remove()
        _restore_attr(model, "_require_grads_hooks", old_hooks if old_hooks else _MISSING)
        _restore_attr(model, "_require_grads_hook", old_hook)
        for m, flag, func in gc_attrs:
            _restore_attr(m, "gradient_checkpointing", flag)
            _restore_attr(m, "_gradient_checkpointing_func", func)
        for m in model.modules():  # modules that got the attribute only now
            if all(m is not g for g, _, _ in gc_attrs) and "gradient_checkpointing" in m.__dict__:
                del m.__dict__["gradient_checkpointing"]
                m.__dict__.pop("_gradient_checkpointing_func", None)
        for m, mode in modes:
            m.training = mode


_MISSING = object()


def _restore_attr(obj: Any, name: str, value: Any) -> None:
    if value is _MISSING:
        obj.__dict__.pop(name, None)
    else:
        obj.__dict__[name] = value


def stat_shape(stat: str, weight_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of gradient statistic ``stat`` for a weight of ``weight_shape``."""
    if stat == "fisher_rows":
        return tuple(weight_shape[:1])
    if stat == "fisher_cols":
        return tuple(weight_shape[1:])
    return tuple(weight_shape)


def _install_hooks(stack: contextlib.ExitStack,
                   entries: Iterable[tuple[nn.Parameter, list[str]]], want: set[str],
                   loss_scale: float = 1.0) -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, list[int]]]:
    """fp32 accumulators per target weight, fed by post-accumulate-grad hooks that drop .grad."""
    buffers: dict[int, dict[str, torch.Tensor]] = {}
    counts: dict[int, list[int]] = {}
    for p, _ in entries:
        bufs = {s: torch.zeros(stat_shape(s, tuple(p.shape)), dtype=torch.float32,
                               device=p.device) for s in want}
        buffers[id(p)] = bufs
        counts[id(p)] = [0]
        handle = p.register_post_accumulate_grad_hook(_accumulator(bufs, counts[id(p)], loss_scale))
        stack.callback(handle.remove)
    return buffers, counts


def _accumulator(bufs: dict[str, torch.Tensor], count: list[int],
                 loss_scale: float = 1.0) -> Callable[[torch.Tensor], None]:
    def hook(p: torch.Tensor) -> None:
        g = p.grad.float()
        if loss_scale != 1.0:
            g = g / loss_scale
        if "fisher" in bufs:
            bufs["fisher"].addcmul_(g, g)
        if "fisher_rows" in bufs or "fisher_cols" in bufs:
            g2 = g * g
            if "fisher_rows" in bufs:
                bufs["fisher_rows"].add_(g2.sum(dim=1))
            if "fisher_cols" in bufs:
                bufs["fisher_cols"].add_(g2.sum(dim=0))
        if "grad_absmean" in bufs:
            bufs["grad_absmean"].add_(g.abs())
        count[0] += 1
        p.grad = None  # the whole point: never hold more than one gradient per weight
    return hook


def _check_counts(counts: dict[int, list[int]], by_param: dict[int, tuple[nn.Parameter, list[str]]],
                  n: int) -> None:
    for key, (_, names) in by_param.items():
        if counts[key][0] != n:
            raise UserError(f"{names[0]} received a gradient in {counts[key][0]} of {n} samples: "
                            "it is not on the path from the inputs to the loss; drop it from the "
                            "targets")


def _finalize(buffers: dict[int, dict[str, torch.Tensor]],
              by_param: dict[int, tuple[nn.Parameter, list[str]]], want: set[str], n: int,
              bad_loss: bool) -> Stats:
    """Mean the |g| sums, check finiteness, move each tensor to CPU once."""
    out: Stats = {}
    for key, (_, names) in by_param.items():
        bufs = buffers[key]
        if "grad_absmean" in bufs:
            bufs["grad_absmean"].div_(n)
        finite = all(bool(torch.isfinite(t).all()) for t in bufs.values())
        if bad_loss or not finite:
            raise UserError(f"non-finite loss or gradient while collecting gradient statistics "
                            f"(first bad target {names[0]}): run them in float32 (--dtype "
                            "float32) or check the calibration text")
        cpu = {s: bufs[s].cpu() for s in sorted(want)}
        for name in names:
            out[name] = cpu
    return out


def _peak_rss_bytes() -> int:
    """Lifetime peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
