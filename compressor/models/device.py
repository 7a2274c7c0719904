"""Compute device, compute dtype and storage dtype from the user's words (auto, cpu, cuda:N,
bfloat16, ...)."""

from __future__ import annotations

from typing import Any

import torch

from compressor.errors import UserError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is a UserError."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{device}' asked for but CUDA is not available: use --device cpu")
    return dev


def checkpoint_dtype(config: Any) -> torch.dtype | None:
    """The floating dtype the checkpoint declares in its config, if any."""
    own = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(own, str):
        own = DTYPES.get(own.replace("torch.", ""))
    return own if isinstance(own, torch.dtype) and own.is_floating_point else None


def resolve_dtype(dtype: str | torch.dtype, config: Any, device: torch.device) -> torch.dtype:
    """'auto': the checkpoint's own dtype on CUDA; float32 on CPU (half math there is slow and
    inexact)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return checkpoint_dtype(config) or torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}': use auto, float32, float16 or bfloat16")
    return DTYPES[dtype]


def resolve_storage_dtype(dtype: str, own: str | None, compute: torch.dtype) -> torch.dtype:
    """'auto': the checkpoint's own dtype ``own`` (compressing must not grow a bfloat16 model
    to float32 because the math ran in float32), else the compute dtype."""
    if dtype == "auto":
        return DTYPES.get(own or "", compute)
    if dtype not in DTYPES:
        raise UserError(f"unknown storage dtype '{dtype}': use auto, float32, float16 or bfloat16")
    return DTYPES[dtype]
