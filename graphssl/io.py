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
    recorder = None
    try:
        with open(tmp, "wb") as f:
            recorder = _Recorder(f)
            write(recorder)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        cause = recorder.error if recorder is not None and recorder.error is not None else e
        raise WriteError(f"could not write {path}: {describe_write_error(cause)}") from None
    return path


class _Recorder:
    """The open file as a writer sees it, remembering the OSError of a failed write: torch's writer
    reports a full disk only as "unexpected pos N vs M"."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def describe_write_error(e: BaseException) -> str:
    """"no space left on the device" for a full disk, else the error."""
    text = f"{type(e).__name__}: {e}"
    if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in text or "file write failed" in text:
        return "no space left on the device"
    if getattr(e, "errno", None) == errno.EDQUOT:
        return "disk quota exceeded"
    return text
