"""The heal loop: AdamW on the low-rank factors only, batch 1, gradient checkpointing, seeded.

Memory. Only the factors get gradients and optimizer state (fp32: 16 bytes a factor value,
weights + grad + two Adam moments); the frozen model stays in its compute dtype; activations
are checkpointed per decoder layer (Hugging Face's non-reentrant checkpointing, dropout off).
The loss is computed in fp32 on one window's logits.

Determinism. Window order is a seeded permutation (cycled when steps > windows), the learning
rate a pure function of the step, and the run has no other randomness: the same seed gives the
same tensors on one machine, and a run resumed from a checkpoint gives the same tensors as an
uninterrupted one (tested).

Resume. Every ``save_every`` steps the fp32 factors, the optimizer state and the step and loss
history are written to ``state_dir`` (tensors first, the JSON that marks the checkpoint valid
last); ``resume=True`` continues from there.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from compressor.atomic import atomic_write_text
from compressor.core.gradients import _checkpointing_eval, _on_device
from compressor.errors import UserError
from compressor.heal.config import HealConfig
from compressor.heal.data import TeacherCache
from compressor.heal.factors import TrainableFactors, trainable_factors
from compressor.heal.loss import next_token_ce, topk_kl

FP16_LOSS_SCALE = 2.0 ** 12
STATE_JSON = "heal_state.json"
FACTORS_FILE = "heal_factors.safetensors"
OPTIM_FILE = "heal_optimizer.safetensors"

# step i (1-based), total, loss of that step
StepCallback = Callable[[int, int, float], None]


@dataclass
class HealResult:
    steps: int
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    trainable_params: int = 0
    trained_parts: int = 0
    skipped_qlowrank: list[str] = field(default_factory=list)
    skipped_steps: int = 0
    resumed_from_step: int = 0
    seconds: float = 0.0
    gradient_checkpointing: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["skipped_qlowrank"] = len(self.skipped_qlowrank)
        return d


def lr_at(step: int, cfg: HealConfig) -> float:
    """Learning rate of 0-based ``step``: linear warmup, then cosine decay to 0 at ``steps``."""
    warm = min(cfg.warmup, max(cfg.steps - 1, 0))
    if step < warm:
        return cfg.lr * (step + 1) / (warm + 1)
    span = max(cfg.steps - warm, 1)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / span))


def window_order(n: int, steps: int, seed: int) -> list[int]:
    """Which window each step trains on: seeded permutations of range(n), concatenated."""
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps:
        order += torch.randperm(n, generator=g).tolist()
    return order[:steps]


def window_loss(model: nn.Module, ids: torch.Tensor, loss: str, teacher: TeacherCache | None,
                i: int, device: torch.device) -> torch.Tensor:
    """The heal loss of window ``i`` (``ids``: (seqlen,) on ``device``)."""
    logits = model(input_ids=ids[None], use_cache=False).logits[0]
    if loss == "ce":
        return next_token_ce(logits, ids)
    if teacher is None:
        raise ValueError("the kl loss needs the teacher cache")
    return topk_kl(logits, *teacher.window(i, device))


@torch.no_grad()
def mean_loss(model: nn.Module, windows: torch.Tensor, loss: str, teacher: TeacherCache | None,
              device: torch.device | str) -> float:
    """The heal loss averaged over windows (model in eval mode, no gradients)."""
    device = torch.device(device)
    was = model.training
    model.eval()
    try:
        vals = [float(window_loss(model, windows[i].to(device), loss, teacher, i, device))
                for i in range(windows.shape[0])]
    finally:
        model.train(was)
    return sum(vals) / len(vals)


def heal(model: nn.Module, windows: torch.Tensor, cfg: HealConfig, *, device: torch.device | str,
         seed: int, teacher: TeacherCache | None = None, on_step: StepCallback | None = None,
         state_dir: Path | None = None, resume: bool = False) -> HealResult:
    """Train the model's low-rank factors in place for ``cfg.steps`` steps; see the module doc.

    ``windows`` (n, seqlen) token ids; ``teacher`` holds their teacher distributions (needed
    for ``loss='kl'``). The model is left on the device it came from, in its modes, with its
    factors back in their storage dtype.
    """
    device = torch.device(device)
    if cfg.loss == "kl" and teacher is None:
        raise ValueError("heal with loss 'kl' needs the teacher cache")
    if teacher is not None and teacher.logp.shape[:2] != tuple(windows.shape):
        raise ValueError(f"teacher cache {tuple(teacher.logp.shape[:2])} does not match the "
                         f"windows {tuple(windows.shape)}")
    t0 = time.perf_counter()
    result = HealResult(steps=cfg.steps)
    order = window_order(windows.shape[0], cfg.steps, seed)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_on_device(model, device))
        factors: TrainableFactors = stack.enter_context(trainable_factors(model))
        result.trainable_params = factors.numel
        result.trained_parts = len(factors.params) // 2
        result.skipped_qlowrank = factors.skipped_qlowrank
        if not factors.params or cfg.steps == 0:
            result.seconds = time.perf_counter() - t0
            return result
        result.gradient_checkpointing = stack.enter_context(_checkpointing_eval(model))
        params = list(factors.params.values())
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                                weight_decay=0.0, foreach=False)
        start = 0
        if resume and state_dir is not None and (state_dir / STATE_JSON).is_file():
            start = _load_state(state_dir, factors, opt, result)
        half = any(p.dtype == torch.float16 for p in model.parameters())
        scale = FP16_LOSS_SCALE if half else 1.0
        for step in range(start, cfg.steps):
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            i = order[step]
            loss = window_loss(model, windows[i].to(device), cfg.loss, teacher, i, device)
            (loss * scale).backward()
            grads = [p.grad for p in params if p.grad is not None]
            if scale != 1.0:
                for g in grads:
                    g.div_(scale)
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=False)
            value = float(loss.detach())
            if math.isfinite(value) and math.isfinite(float(norm)):
                opt.step()
            else:
                result.skipped_steps += 1
            opt.zero_grad(set_to_none=True)
            result.losses.append(value)
            result.lrs.append(lr)
            if on_step is not None:
                on_step(step + 1, cfg.steps, value)
            if (state_dir is not None and cfg.save_every and (step + 1) % cfg.save_every == 0
                    and step + 1 < cfg.steps):
                _save_state(state_dir, factors, opt, result, step + 1)
    result.seconds = time.perf_counter() - t0
    return result


# ----------------------------------------------------------------------------- checkpoints

def _save_state(folder: Path, factors: TrainableFactors, opt: torch.optim.Optimizer,
                result: HealResult, step: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / STATE_JSON
    if marker.exists():
        marker.unlink()      # tensors being replaced: the old marker must not vouch for them
    _save(folder / FACTORS_FILE, {k: p.detach().cpu().contiguous() for k, p in factors.params.items()})
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            t = val if isinstance(val, torch.Tensor) else torch.tensor(val)
            tensors[f"{idx}.{key}"] = t.detach().cpu().contiguous()
    _save(folder / OPTIM_FILE, tensors)
    atomic_write_text(marker, json.dumps({
        "step": step, "names": list(factors.params), "losses": result.losses, "lrs": result.lrs,
        "skipped_steps": result.skipped_steps,
        "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]}))


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def _load_state(folder: Path, factors: TrainableFactors, opt: torch.optim.Optimizer,
                result: HealResult) -> int:
    meta = json.loads((folder / STATE_JSON).read_text())
    if meta["names"] != list(factors.params):
        raise UserError(f"cannot resume healing: {folder} holds factors of other modules; "
                        f"rerun without --resume")
    saved = load_file(str(folder / FACTORS_FILE))
    with torch.no_grad():
        for k, p in factors.params.items():
            if saved[k].shape != p.shape:
                raise UserError(f"cannot resume healing: {k} is {tuple(saved[k].shape)} in "
                                f"{folder}, {tuple(p.shape)} here; rerun without --resume")
            p.copy_(saved[k])
    raw = load_file(str(folder / OPTIM_FILE))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in raw.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = t
    groups = opt.state_dict()["param_groups"]
    for g, saved_g in zip(groups, meta["param_groups"]):
        g.update(saved_g)
    opt.load_state_dict({"state": state, "param_groups": groups})
    result.losses = list(meta["losses"])
    result.lrs = list(meta["lrs"])
    result.skipped_steps = int(meta["skipped_steps"])
    result.resumed_from_step = int(meta["step"])
    return int(meta["step"])
