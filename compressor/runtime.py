"""Device, timing and memory facts the report records."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import torch


class StageTimer:
    """Wall time per named stage (load, data, gradients, plan, compress, write, eval)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t


def peak_memory(device: torch.device) -> dict[str, int]:
    """Peak resident memory of this process (ru_maxrss) and, on CUDA, peak allocated."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss *= 1 if sys.platform == "darwin" else 1024
    out = {"cpu_peak_rss_bytes": int(rss)}
    if device.type == "cuda":
        out["cuda_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("svdc", "torch", "transformers", "safetensors", "scipy", "datasets"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine(device: torch.device) -> dict[str, str | int]:
    out: dict[str, str | int] = {"cpu_cores": os.cpu_count() or 0, "device": str(device)}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out
