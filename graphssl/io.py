"""Atomic file writes: a reader never sees half a file, a failed write keeps the old one."""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import BinaryIO, Callable


class WriteError(OSError):
    """A file could not be written; the message names the path and, for a full disk, says so."""


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    On failure the temporary file is removed and an existing ``path`` is left intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise WriteError(f"could not write {path}: {describe_write_error(e)}") from None
    return path


def describe_write_error(e: BaseException) -> str:
    """"no space left on the device" for a full disk (torch hides ENOSPC inside its own writer error)."""
    text = f"{type(e).__name__}: {e}"
    if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in text or "file write failed" in text:
        return "no space left on the device"
    return text
