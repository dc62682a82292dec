"""CPU counting from the CPU set, cgroup v1/v2 quotas and PADIM_NUM_THREADS."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from padim.utils import cpus
from padim.errors import PadimError


def _v2(tmp_path: Path, content: str | None, group: str = "/user.slice/app") -> float | None:
    root = tmp_path / "cgroup"
    (root / group.lstrip("/")).mkdir(parents=True, exist_ok=True)
    if content is not None:
        (root / group.lstrip("/") / "cpu.max").write_text(content)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"0::{group}\n")
    return cpus.cgroup_quota_cpus(root, proc_cgroup=proc)


def _v1(tmp_path: Path, quota: str, period: str = "100000", name: str = "cpu") -> float | None:
    folder = tmp_path / "cgroup" / name
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text(quota + "\n")
    (folder / "cpu.cfs_period_us").write_text(period + "\n")
    return cpus.cgroup_quota_cpus(tmp_path / "cgroup", proc_cgroup=tmp_path / "missing")


def test_v2_limit(tmp_path: Path) -> None:
    assert _v2(tmp_path, "150000 100000\n") == pytest.approx(1.5)


def test_v2_max_is_no_limit(tmp_path: Path) -> None:
    assert _v2(tmp_path, "max 100000\n") is None


def test_v2_falls_back_to_root_cpu_max(tmp_path: Path) -> None:
    (tmp_path / "cgroup").mkdir()
    (tmp_path / "cgroup" / "cpu.max").write_text("200000 100000\n")
    assert _v2(tmp_path, None) == pytest.approx(2.0)


@pytest.mark.parametrize("content", ["", "garbage", "abc 100000", "150000 0", "1 2 3"])
def test_v2_malformed_is_none(tmp_path: Path, content: str) -> None:
    assert _v2(tmp_path, content) is None


def test_v1_limit(tmp_path: Path) -> None:
    assert _v1(tmp_path, "50000") == pytest.approx(0.5)


def test_v1_combined_controller_folder(tmp_path: Path) -> None:
    assert _v1(tmp_path, "300000", name="cpu,cpuacct") == pytest.approx(3.0)


def test_v1_minus_one_is_no_limit(tmp_path: Path) -> None:
    assert _v1(tmp_path, "-1") is None


def test_v1_malformed_is_none(tmp_path: Path) -> None:
    assert _v1(tmp_path, "lots") is None


def test_missing_files_are_none(tmp_path: Path) -> None:
    assert cpus.cgroup_quota_cpus(tmp_path / "nothing", proc_cgroup=tmp_path / "nope") is None


def test_real_system_does_not_raise() -> None:
    quota = cpus.cgroup_quota_cpus()
    assert quota is None or quota > 0
    assert cpus.available_cpus() >= 1


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """Set the affinity size and quota that available_cpus() sees."""
    monkeypatch.delenv(cpus.ENV_VAR, raising=False)

    def set_(affinity: int, quota: float | None) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
        monkeypatch.setattr(cpus, "cgroup_quota_cpus", lambda *a, **k: quota)
    return set_


def test_affinity_of_one(machine) -> None:
    machine(1, None)
    assert cpus.affinity_cpus() == 1
    assert cpus.available_cpus() == 1


def test_fractional_quota_rounds_up_to_one(machine) -> None:
    machine(8, 0.5)
    assert cpus.available_cpus() == 1


def test_quota_caps_affinity(machine) -> None:
    machine(4, 1.5)
    assert cpus.available_cpus() == 2


def test_affinity_caps_quota(machine) -> None:
    machine(3, 16.0)
    assert cpus.available_cpus() == 3


def test_affinity_fallback_without_sched_getaffinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert cpus.affinity_cpus() == 1


def test_env_override(machine, monkeypatch: pytest.MonkeyPatch) -> None:
    machine(2, 1.0)
    monkeypatch.setenv(cpus.ENV_VAR, "7")
    assert cpus.available_cpus() == 7


@pytest.mark.parametrize("value", ["0", "-1", "abc", "", "1.5"])
def test_env_invalid(machine, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    machine(2, None)
    monkeypatch.setenv(cpus.ENV_VAR, value)
    with pytest.raises(PadimError, match=cpus.ENV_VAR) as info:
        cpus.available_cpus()
    assert repr(value) in str(info.value) and "\n" not in str(info.value)


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_configure_torch_threads_explicit(torch_threads) -> None:
    target = 1 if torch.get_num_threads() != 1 else 2
    assert cpus.configure_torch_threads(target) == target
    assert torch.get_num_threads() == target


def test_configure_torch_threads_default(torch_threads, machine) -> None:
    machine(1, None)
    torch.set_num_threads(2)
    assert cpus.configure_torch_threads() == 1
    assert torch.get_num_threads() == 1


def test_parallel_slices_cover_every_index_once_and_restore_torch_threads() -> None:
    import threading

    import torch

    from padim.utils.cpus import parallel_slices

    before = torch.get_num_threads()
    seen: list[tuple[int, int, int]] = []
    lock = threading.Lock()

    def record(sl: slice) -> None:
        with lock:
            seen.append((sl.start, sl.stop, torch.get_num_threads()))

    parallel_slices(record, 103, 10, threads=2)
    covered = sorted(i for start, stop, _ in seen for i in range(start, stop))
    assert covered == list(range(103))
    assert {t for *_, t in seen} == {1}  # each worker runs torch single-threaded
    assert torch.get_num_threads() == before

    def fail(sl: slice) -> None:
        if sl.start == 50:
            raise ValueError("slice 50")

    with pytest.raises(ValueError, match="slice 50"):
        parallel_slices(fail, 103, 10, threads=2)
    assert torch.get_num_threads() == before


def test_torch_threads_sets_the_count_inside_and_restores_it_after_an_error() -> None:
    outer = torch.get_num_threads()
    with cpus.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == outer
    with pytest.raises(RuntimeError), cpus.torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == outer
