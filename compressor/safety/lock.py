"""One run per output at a time: an fcntl lock on ``.<output>.lock`` beside the output.

The lock file records the holder's PID, host and start time so a refused run can say who
holds it. The kernel drops an flock when its process dies (even on kill -9), so a lock
file left behind by a dead run is detected by simply being able to lock it: it is taken
over, with a note naming the dead holder.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from compressor.errors import UserError

log = logging.getLogger("svdc")


def lock_path_for(output: Path) -> Path:
    return output.parent / f".{output.name}.lock"


def _holder(path: Path) -> dict:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class OutputLock:
    """Context manager: hold the output's lock for a whole run, or fail at once."""

    def __init__(self, output: str | Path):
        self.output = Path(output)
        self.path = lock_path_for(self.output)
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                h = _holder(self.path)
                who = f"PID {h.get('pid', '?')} on {h.get('host', '?')}"
                since = f" since {h['started']}" if h.get("started") else ""
                raise UserError(f"output {self.output} is in use by another svdc run ({who}{since}); "
                                f"wait for it to finish or choose another -o") from None
            # the file may have been unlinked by a holder releasing it between our open and
            # flock: then we locked an orphan inode, so start over on the current file
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = _holder(self.path)
        if old.get("pid"):
            log.warning("taking over the lock of %s from PID %s on %s (that run is no longer "
                        "running)", self.output, old.get("pid"), old.get("host", "?"))
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
