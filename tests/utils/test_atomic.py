"""Atomic writes: a writer killed mid-write leaves a temporary file that the next write cleans up, and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from padim.utils import atomic
from padim.utils.atomic import TEMP_NAME, atomic_write, remove_stale_temporaries

KILLED_WRITER = """
import os, signal, sys
from padim.utils.atomic import atomic_write

def write(tmp):
    with open(tmp, "wb") as f:
        f.write(b"x" * 1_000_000)
        f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

atomic_write(sys.argv[1], write)
"""


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TEMP_NAME.match(p.name))


def test_a_sigkilled_writers_temporary_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"old model")
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(model)], env={**os.environ}, timeout=60, check=False)
    assert proc.returncode == -9
    (left,) = leftovers(tmp_path)
    assert left.startswith(".model.safetensors.padim-") and (tmp_path / left).stat().st_size == 1_000_000
    assert model.read_bytes() == b"old model"  # the kill left the old model intact
    atomic_write(tmp_path / "other.json", lambda tmp: Path(tmp).write_text("{}"))  # any write into the folder
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "other.json"]


def test_only_the_librarys_own_dead_or_old_temporaries_are_removed(tmp_path: Path) -> None:
    host, me = atomic._host(), os.getpid()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    names = {
        f".m.safetensors.padim-{host}-{dead}-abc_123.tmp": True,  # writer gone
        f".m.safetensors.padim-otherhost-{dead}-abc123.tmp": False,  # another machine's pid: can't tell, recent
        ".old.padim-otherhost-1-abc123.tmp": True,  # another machine's, untouched for two days
        f".m.safetensors.padim-{host}-{me}-abc123.tmp": False,  # a live writer (this process)
        ".m.safetensors.k2j3h4.tmp": False,  # not this library's pattern (older versions, other tools)
        "m.safetensors.padim-x-1-a.tmp": False,  # not hidden: not ours
        "notes.tmp": False,
        "model.safetensors": False,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"data")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(tmp_path / ".old.padim-otherhost-1-abc123.tmp", (two_days_ago, two_days_ago))
    (tmp_path / f".d.padim-{host}-{dead}-abc.tmp").mkdir()  # a folder with our pattern: not a file we made
    (tmp_path / f".l.padim-{host}-{dead}-abc.tmp").symlink_to(tmp_path / "notes.tmp")
    assert remove_stale_temporaries(tmp_path) == 2
    for name, removed in names.items():
        assert (tmp_path / name).exists() is not removed, name
    assert (tmp_path / f".d.padim-{host}-{dead}-abc.tmp").is_dir()
    assert (tmp_path / f".l.padim-{host}-{dead}-abc.tmp").is_symlink()


def test_temporary_names_carry_host_and_pid(tmp_path: Path) -> None:
    seen = []
    atomic_write(tmp_path / "a.txt", lambda tmp: (seen.append(Path(tmp).name), Path(tmp).write_text("a")))
    match = TEMP_NAME.match(seen[0])
    assert match and match["pid"] == str(os.getpid()) and match["host"] == atomic._host()
    assert seen[0].startswith(".a.txt.padim-")
