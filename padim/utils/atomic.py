"""Atomic file writes: readers see the old file or the whole new one, never a half-written one.

The temporary file beside the target is named `.NAME.padim-HOST-PID-RANDOM.tmp`. A writer killed
mid-write (SIGKILL, power loss) leaves it behind, as large as the file it was writing; the next
write into the same folder (at most once a minute per process) removes such leftovers: ones whose writer process on this host is gone,
or (from any host) untouched for STALE_AFTER_S. Files of any other name are never touched.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from stat import S_ISREG

from padim.errors import InputError, PadimEnvironmentError

STALE_AFTER_S = 24 * 3600  # a temporary file untouched this long has no live writer, whatever its host
TEMP_NAME = re.compile(r"^\..+\.padim-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")
SWEEP_EVERY_S = 60.0  # a folder is scanned at most this often by one process, not on every write
_swept: dict[str, float] = {}  # folder -> when this process last cleaned it
_swept_lock = threading.Lock()


def _host() -> str:
    """This machine's name as it appears in temporary file names (letters, digits, underscores)."""
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"


def _temp_prefix(path: Path) -> str:
    """The start of the name of a temporary file this process makes for path."""
    return f".{path.name}.padim-{_host()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def is_stale(entry: os.DirEntry | Path, now: float | None = None) -> bool:
    """Whether a file is a temporary file of this library that no live writer will finish."""
    match = TEMP_NAME.match(entry.name)
    if not match:
        return False
    try:
        stat = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    if not S_ISREG(stat.st_mode):  # a regular file, not a link or folder
        return False
    if (now if now is not None else time.time()) - stat.st_mtime > STALE_AFTER_S:
        return True
    return match["host"] == _host() and not _pid_alive(int(match["pid"]))


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete this library's leftover temporary files in a folder (see the module docstring); how many."""
    removed = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if is_stale(entry):
                    try:
                        os.unlink(entry.path)
                        removed += 1
                    except OSError:
                        pass  # another process cleaned it, or we may not: not this write's problem
    except OSError:
        pass
    return removed


def _sweep(folder: Path) -> None:
    """Clean a folder's stale temporaries, unless this process did so in the last SWEEP_EVERY_S."""
    key, now = os.path.realpath(folder), time.monotonic()
    with _swept_lock:
        if now - _swept.get(key, -SWEEP_EVERY_S) < SWEEP_EVERY_S:
            return
        _swept[key] = now
    remove_stale_temporaries(folder)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call write(tmp_path) on a temporary file beside path, then rename it over path.

    A crash or error leaves the previous file, if any, untouched.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{path}: cannot write, folder {folder} does not exist")
    _sweep(folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=folder)
    except OSError as exc:
        raise PadimEnvironmentError(f"{path}: cannot write ({exc.strerror})") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; a model is an ordinary file
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise PadimEnvironmentError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except Exception as exc:
        if not _is_io_error(exc):
            raise
        raise PadimEnvironmentError(f"{path}: cannot write ({str(exc).strip().splitlines()[0]})") from None
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
        raise InputError(f"{path}: cannot write, folder {folder} does not exist")
    if path.is_dir():
        raise InputError(f"{path}: cannot write, it is a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise PadimEnvironmentError(f"{path}: cannot write ({exc.strerror})") from None
    os.close(fd)
    os.unlink(tmp)


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
