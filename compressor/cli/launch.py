"""`--nproc N`: run the same command as N ranks on this host, as `torchrun --nproc-per-node N
-m compressor ...` would (same environment variables: RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), and report a failed rank in one line.

Multi-node runs use torchrun itself (its rendezvous flags), see README "Scale".
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from compressor.console import console
from compressor.core.distributed import LAUNCHED_ENV, PEER_LOST_EXIT
from compressor.errors import UserError

GRACE_S = 20.0   # after a rank fails, how long the others get to stop on their own


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def launched_rank() -> bool:
    """True inside a rank started by torchrun or by ``--nproc`` (then --nproc is ignored)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _describe(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    if rc == PEER_LOST_EXIT:
        return "lost contact with the other ranks"
    return f"exit code {rc}"


def launch(nproc: int, argv: list[str] | None = None) -> int:
    """Start ``nproc`` ranks of ``python -m compressor ARGV`` and wait; return the exit code.

    Rank 0 prints its own progress and its own errors (exit 2); ranks > 0 are silent. When a
    rank dies (a signal, an unexpected exit code) the others are given GRACE_S seconds, then
    stopped, and this prints one line naming the rank and how it died.
    """
    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")
    args = strip_nproc(list(sys.argv[1:] if argv is None else argv))
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
            "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "GROUP_RANK": "0",
            "NODE_RANK": "0", LAUNCHED_ENV: "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    procs = [subprocess.Popen([sys.executable, "-m", "compressor", *args],
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in range(nproc)]
    first_bad: tuple[int, int] | None = None     # (rank, rc) of the first abnormal exit
    deadline = None
    try:
        while True:
            codes = [p.poll() for p in procs]
            for r, rc in enumerate(codes):
                if rc is None or rc == 0:
                    continue
                if deadline is None:
                    deadline = time.monotonic() + GRACE_S
                # exit 2 is an error rank 0 prints itself (a guard shares it with every rank)
                if first_bad is None and rc != 2:
                    first_bad = (r, rc)
            if all(c is not None for c in codes):
                break
            if deadline is not None and time.monotonic() > deadline:
                _stop(procs)
                continue
            time.sleep(0.2)
    except KeyboardInterrupt:
        for p in procs:     # the terminal sent SIGINT to every rank too; let them stop
            try:
                p.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                p.kill()
        return 130
    codes = [p.returncode for p in procs]
    if all(c == 0 for c in codes):
        return 0
    if codes[0] == 2 and (first_bad is None or first_bad[1] == PEER_LOST_EXIT):
        return 2            # rank 0 printed the error
    if first_bad is None:
        first_bad = next((r, c) for r, c in enumerate(codes) if c != 0)
    r, rc = first_bad
    if rc == PEER_LOST_EXIT:
        why = ("ranks lost contact with each other (no rank died: one stalled past the "
               "timeout, SVDC_DIST_TIMEOUT)")
    else:
        why = f"rank {r} of {nproc} died ({_describe(rc)})"
    console.print(f"[red]error:[/] {why}; the other ranks were stopped and nothing was written; "
                  f"finished layers are checkpointed: rerun the same command with --resume")
    return 1


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    end = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
