"""A full disk or a refused write is the user's to fix, not an internal error: map it to one
line. safetensors reports I/O errors as its own exception with the OS error in the text."""

from __future__ import annotations

import errno

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def user_message(e: BaseException) -> str | None:
    """One line for a disk-full / permission error, else None."""
    if isinstance(e, OSError):
        where = f" writing {e.filename}" if e.filename else ""
        if e.errno in _FULL:
            return f"no space left on the device{where}: free some space or choose another -o"
        if e.errno in _DENIED:
            return f"permission denied{where} ({e.strerror}): choose another -o"
        return None
    text = str(e)
    if type(e).__name__ == "SafetensorError" and ("StorageFull" in text or "code: 28" in text
                                                  or "No space left" in text):
        return "no space left on the device writing the weights: free some space or choose another -o"
    return None
