"""Activation memory checked before calibrating: the sequential pass keeps every window's
hidden states on the CPU (each replaced in place as a layer propagates), so a huge --nsamples is refused
with the number instead of dying of out-of-memory an hour later."""

from __future__ import annotations

import os

from compressor.errors import UserError


def available_bytes() -> int | None:
    """Memory the OS can give us now (MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def activation_bytes(nsamples: int, seqlen: int, hidden: int, elem_bytes: int) -> int:
    """Every window's hidden state and one window's layer output, plus the token ids."""
    return (nsamples + 1) * seqlen * hidden * elem_bytes + nsamples * seqlen * 8


def check_activation_memory(nsamples: int, seqlen: int, hidden: int | None, elem_bytes: int,
                            available: int | None = None) -> None:
    if not hidden:
        return
    avail = available_bytes() if available is None else available
    need = activation_bytes(nsamples, seqlen, hidden, elem_bytes)
    if avail is not None and need > 0.9 * avail:
        raise UserError(f"--nsamples {nsamples} x --seqlen {seqlen} needs about "
                        f"{need / 2**30:.1f} GiB of memory for the layer activations, more than "
                        f"the {avail / 2**30:.1f} GiB available: lower --nsamples or --seqlen")
