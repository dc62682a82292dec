"""Atomic file writes: readers see the old file or the whole new one, never a half-written one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from padim.errors import PadimError


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call write(tmp_path) on a temporary file beside path, then rename it over path.

    A crash or error leaves the previous file, if any, untouched.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise PadimError(f"{path}: cannot write, folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise PadimError(f"{path}: cannot write ({exc.strerror})") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; a model is an ordinary file
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise PadimError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except Exception as exc:
        if not _is_io_error(exc):
            raise
        raise PadimError(f"{path}: cannot write ({str(exc).strip().splitlines()[0]})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _is_io_error(exc: Exception) -> bool:
    """A writer library's wrapped OS error (safetensors raises SafetensorError '... I/O error: ... (os error 28)')."""
    return "I/O error" in str(exc) or "(os error " in str(exc)


def check_writable(path: str | os.PathLike) -> None:
    """Refuse, before long work, a destination atomic_write could not write (no folder, read-only, a folder)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise PadimError(f"{path}: cannot write, folder {folder} does not exist")
    if path.is_dir():
        raise PadimError(f"{path}: cannot write, it is a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise PadimError(f"{path}: cannot write ({exc.strerror})") from None
    os.close(fd)
    os.unlink(tmp)


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
