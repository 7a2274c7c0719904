"""One run per output at a time: an fcntl lock on ``.<output>.lock`` beside the output.

The lock file records the holder's PID, host and start time so a refused run can say who
holds it. The kernel drops an flock when its process dies (even on kill -9), so a lock
file left behind by a dead run is detected by simply being able to lock it: it is taken
over, with a note naming the dead holder. The file is created with O_EXCL and opened with
O_NOFOLLOW: a link planted in its place (or a hard link to someone's file) is refused, never
written through.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import stat
import time
from pathlib import Path

from compressor.errors import UserError

from .links import check_own_path

log = logging.getLogger("svdc")


def lock_path_for(output: Path) -> Path:
    return output.parent / f".{output.name}.lock"


def _holder(fd: int) -> dict:
    """What the lock file says about its holder, read through our own descriptor."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


_FLAGS = os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _open_lock(path: Path, output: Path) -> int | None:
    """A new lock file (O_CREAT|O_EXCL), or the existing one if it is a plain file with one
    name (a dead run's); None when it vanished meanwhile (try again)."""
    try:
        return os.open(path, _FLAGS | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        pass
    check_own_path(path, "file", output)          # a link or a folder: refused, not opened
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:                # replaced by a link since the check
            check_own_path(path, "file", output)
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise UserError(f"{path} is not a lock file svdc made (it has {st.st_nlink} names, "
                        f"a hard link to another file); svdc never writes into it: move it "
                        f"away or choose another -o")
    return fd


class OutputLock:
    """Context manager: hold the output's lock for a whole run, or fail at once."""

    def __init__(self, output: str | Path):
        self.output = Path(output)
        self.path = lock_path_for(self.output)
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = _open_lock(self.path, self.output)
            if fd is None:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                h = _holder(fd)
                os.close(fd)
                who = f"PID {h.get('pid', '?')} on {h.get('host', '?')}"
                since = f" since {h['started']}" if h.get("started") else ""
                raise UserError(f"output {self.output} is in use by another svdc run ({who}{since}); "
                                f"wait for it to finish or choose another -o") from None
            # the file may have been unlinked by a holder releasing it between our open and
            # flock: then we locked an orphan inode, so start over on the current file
            if _is_current(fd, self.path):
                break
            os.close(fd)
        old = _holder(fd)
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
        if _is_current(self._fd, self.path):     # only the file we created, never a newcomer
            os.unlink(self.path)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _is_current(fd: int, path: Path) -> bool:
    """Whether ``path`` (not followed if a link) still names the file open as ``fd``."""
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except FileNotFoundError:
        return False
