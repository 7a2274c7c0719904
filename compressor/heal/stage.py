"""How ``api.compress`` runs post stages: split them off the per-linear stages, prepare heal's
windows and teacher cache BEFORE the sequential pass (it changes the model in place), train
after it. Resume files live in ``<resume folder>/heal/``."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from compressor.core.context import PassContext
from compressor.core.gradients import _on_device
from compressor.core.registry import is_post_stage
from compressor.core.stages import Stage
from compressor.heal.config import HealConfig
from compressor.heal.data import (
    TeacherCache,
    calibration_fallback,
    heal_windows,
    teacher_topk,
)
from compressor.heal.trainer import heal
from compressor.progress import ProgressSink

TEACHER_FILE = "heal_teacher.safetensors"


def split_post_stages(cfgs: list[Any]) -> tuple[list[Stage], list[Any]]:
    """(per-linear stages, post stages' configs); the stage rules already put post stages
    last (core/stage_rules.py)."""
    post = [c for c in cfgs if is_post_stage(c.method)]
    return [Stage.of(c) for c in cfgs if not is_post_stage(c.method)], post


def state_dir(resume_folder: Path) -> Path:
    return resume_folder / "heal"


@dataclass
class HealJob:
    cfg: HealConfig
    windows: torch.Tensor
    teacher: TeacherCache | None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def prepare(cls, cfg: HealConfig, model: nn.Module, tokenizer, calib: torch.Tensor,
                dataset: str, ctx: PassContext, resume: bool,
                dense_forward=None) -> "HealJob":
        """Training windows (never the evaluation split) and, for ``loss: kl``, the teacher's
        top-k cache computed on ``model`` as it is now (uncompressed). ``ctx``: device, seed,
        progress and the run's checkpoints (their folder keeps the cache for --resume).
        ``dense_forward`` (windows -> context manager), when given, is how the model produces
        those logits (a streamed run's replayed forward); else the model runs on the device."""
        seed, device, progress = ctx.seed, ctx.device, ctx.progress
        resume_folder = ctx.resume.folder
        seqlen = cfg.seqlen or int(calib.shape[1])
        if cfg.windows == "disjoint":
            windows, info = heal_windows(tokenizer, dataset, cfg.nsamples, seqlen, seed, calib)
        else:
            windows = calibration_fallback(calib, cfg.nsamples, seqlen)
            info = {"source": dataset, "split": "calib", "windows": "calibration",
                    "reason": "windows: calibration (recipe)", "nsamples": cfg.nsamples,
                    "seqlen": int(windows.shape[1])}
        teacher = None
        if cfg.loss == "kl":
            t0 = time.perf_counter()
            teacher, loaded = _teacher(cfg, model, windows, device, state_dir(resume_folder),
                                       resume, progress, dense_forward)
            info["teacher"] = {"cache": f"top-{cfg.top_k} log-probs + tail bucket",
                               "bytes": teacher.nbytes, "loaded_from_resume": loaded,
                               "seconds": round(time.perf_counter() - t0, 3)}
        return cls(cfg, windows, teacher, info)

    def run(self, model: nn.Module, ctx: PassContext, resume: bool) -> dict[str, Any]:
        """Train (progress: step i/N, loss, ETA); returns the report's ``heal`` section.
        ``ctx``: device, seed, progress and the checkpoints whose folder holds heal's state."""
        device, seed, progress, resume_folder = ctx.device, ctx.seed, ctx.progress, ctx.resume.folder
        progress.start("heal", self.cfg.steps, "step")

        def on_step(i: int, n: int, loss: float) -> None:
            progress.advance("heal", 1, f"step {i}/{n} loss {loss:.4f}")

        res = heal(model, self.windows, self.cfg, device=device, seed=seed, teacher=self.teacher,
                   on_step=on_step, state_dir=state_dir(resume_folder), resume=resume)
        progress.finish("heal")
        return {"config": self.cfg.model_dump(mode="json"), "data": self.info, **res.to_dict()}


def _windows_digest(windows: torch.Tensor) -> str:
    return hashlib.sha256(windows.cpu().numpy().tobytes()).hexdigest()


def _teacher(cfg: HealConfig, model: nn.Module, windows: torch.Tensor, device: torch.device,
             folder: Path, resume: bool, progress: ProgressSink,
             dense_forward=None) -> tuple[TeacherCache, bool]:
    """The teacher cache: from the resume folder when it matches these windows, else computed
    (one forward per window) and saved there for a later --resume."""
    path = folder / TEACHER_FILE
    digest = _windows_digest(windows)
    if resume and path.is_file():
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("windows") == digest and meta.get("top_k") == str(cfg.top_k):
            t = load_file(str(path))
            return TeacherCache(t["logp"], t["index"], t["tail"]), True
    n = windows.shape[0]
    progress.start("heal teacher", n, "window")
    with (_on_device(model, device) if dense_forward is None else dense_forward(windows)):
        cache = teacher_topk(model, windows, cfg.top_k, device,
                             progress=lambda i, _n: progress.advance("heal teacher", 1, f"{i}/{_n}"))
    progress.finish("heal teacher")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in cache.tensors().items()}, str(tmp),
              metadata={"windows": digest, "top_k": str(cfg.top_k)})
    tmp.replace(path)
    return cache, False
