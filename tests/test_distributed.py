"""Distributed fit: two gloo processes under torchrun give the single-process model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from padim.cli import main

ARGS = ["--backbone", "resnet18", "--weights", "random", "--image-size", "64", "--crop-size", "none",
        "--batch-size", "4", "-q", "--resumable"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [exe, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "padim", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers too, never leave them behind
        out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.parametrize("extra", [["--n-features", "32"], ["--n-features", "12", "--reduction", "pca"]])
def test_two_process_fit_equals_single_process_fit(texture_set: Path, tmp_path: Path, extra: list[str]) -> None:
    train = str(texture_set / "train" / "good")  # 12 images: 6 per rank, batches of 4 and 2
    run = torchrun("fit", train, "-o", str(tmp_path / "dist.safetensors"), "--distributed", *ARGS, *extra)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "merged the statistics of 2 processes" in run.stdout
    assert main(["fit", train, "-o", str(tmp_path / "single.safetensors"), *ARGS, *extra]) == 0
    dist, single = load_file(tmp_path / "dist.safetensors"), load_file(tmp_path / "single.safetensors")
    assert dist.keys() == single.keys()
    for name in single:
        a, b = dist[name].double(), single[name].double()
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6 * float(b.abs().max())), name


def test_distributed_without_torchrun_is_a_clear_error(texture_set: Path, tmp_path: Path, capsys) -> None:
    for var in ("RANK", "WORLD_SIZE"):
        os.environ.pop(var, None)
    assert main(["fit", str(texture_set / "train" / "good"), "-o", str(tmp_path / "m.safetensors"),
                 "--distributed", *ARGS]) == 2
    assert "torchrun" in capsys.readouterr().err


def test_sharded_predict_writes_the_single_process_tables(texture_set: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    assert main(["fit", str(texture_set / "train" / "good"), "-o", str(model), "--n-features", "32", *ARGS]) == 0
    test = sorted(str(p) for p in (texture_set / "test").iterdir())  # 12 images, 6 per rank
    run = torchrun("predict", str(model), *test, "-o", str(tmp_path / "dist"), "--distributed", "--image-threshold", "5",
                   "--batch-size", "4", "-q")
    assert run.returncode == 0, run.stderr[-2000:]
    assert main(["predict", str(model), *test, "-o", str(tmp_path / "single"), "--image-threshold", "5",
                 "--batch-size", "4", "-q"]) == 0
    dist = json.loads((tmp_path / "dist" / "scores.json").read_text())["images"]
    single = json.loads((tmp_path / "single" / "scores.json").read_text())["images"]
    assert [r["image"] for r in dist] == [r["image"] for r in single] and len(single) == 12
    assert [r["overlay"] for r in dist] == [r["overlay"] for r in single]
    for a, b in zip(dist, single):
        assert a["score"] == pytest.approx(b["score"], rel=1e-5) and a["defective"] == b["defective"]
    for row in single:  # same shared colour scale: the overlays are the same pictures
        assert np.abs(np.asarray(Image.open(tmp_path / "dist" / row["overlay"]), dtype=int)
                      - np.asarray(Image.open(tmp_path / "single" / row["overlay"]), dtype=int)).max() <= 1
