"""Issue 12, item 4: every failure that reaches `padim` is one line on stderr, never a traceback."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from padim import PaDiM
from padim.errors import PadimWarning
from padim.cli import main
from padim.evaluation.synthetic import load_split

from conftest import TINY
from test_cli import TINY_ARGS, expect_error, padim_script, rewrite_model


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.delenv("PADIM_DEBUG", raising=False)


@pytest.fixture(scope="module")
def model_file(texture_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibrated TINY model file."""
    path = tmp_path_factory.mktemp("cli_errors") / "model.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PadimWarning)
        PaDiM(**TINY, holdout=0.25).fit(load_split(texture_set)[0]).save(path)
    return path


@pytest.fixture(scope="module")
def good_image(texture_set: Path) -> Path:
    return sorted((texture_set / "test" / "good").glob("*.png"))[0]


# ----------------------------------------------------------------------------- options, before any image is read
FIT_OPTIONS = [
    (["--image-size", "100000"], "--image-size"), (["--crop-size", "100000"], "--crop-size"),
    (["--batch-size", "0"], "--batch-size"), (["--seed", "-1", "--holdout", "0.34"], "--seed"),
    (["--device", "bogus"], "bogus"), (["--device", "meta"], "meta"), (["--layers", ""], "--layers"),
    (["--layers", "layer1,,layer3"], "--layers"), (["--n-features", "2.5"], "--n-features"),
    (["--n-features", "0"], "--n-features"), (["--eps", "nan"], "--eps"), (["--eps", "1e-300"], "--eps"),
    (["--eps", "inf"], "--eps"), (["--fpr", "nan"], "--fpr"), (["--fpr", "1.5"], "--fpr"),
    (["--holdout", "nan"], "--holdout"), (["--holdout", "1"], "--holdout"), (["--threads", "0"], "--threads"),
    (["--engine", "tensorrt"], "--engine"), (["--batch-size", "two"], "--batch-size"),
]


@pytest.mark.parametrize("extra, needle", FIT_OPTIONS, ids=[" ".join(e) for e, _ in FIT_OPTIONS])
def test_fit_refuses_bad_options_in_one_line_before_reading_images(
    extra: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-folder"  # an error about it would mean the images were looked at first
    argv = ["fit", str(missing), "-o", str(tmp_path / "m.safetensors"), *TINY_ARGS, *extra]
    try:
        line = expect_error(argv, capsys)
    except SystemExit as exc:  # argparse-level errors: still one line, exit 2
        assert exc.code == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("padim: error: "), lines
        line = lines[0]
    assert needle in line and str(missing) not in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_fit_on_cuda_without_a_gpu_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = expect_error(["fit", str(tmp_path), "-o", str(tmp_path / "m.safetensors"), *TINY_ARGS, "--device", "cuda"],
                        capsys)
    assert "no CUDA GPU" in line


@pytest.mark.parametrize("where", ["folder", "missing folder"])
def test_fit_checks_the_output_location_before_fitting(where: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "existing-folder" if where == "folder" else tmp_path / "absent" / "m.safetensors"
    if where == "folder":
        out.mkdir()
    line = expect_error(["fit", str(tmp_path / "no-such-folder"), "-o", str(out), *TINY_ARGS], capsys)
    assert str(out) in line and "cannot write" in line


@pytest.mark.parametrize("option", ["--image-threshold", "--pixel-threshold"])
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_predict_refuses_bad_thresholds(option: str, value: str, model_file: Path, good_image: Path,
                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    line = expect_error(["predict", str(model_file), str(good_image), "-o", str(out), option, value, "-q"], capsys)
    assert option in line
    assert not (out / "scores.csv").exists()


def test_report_refuses_a_nan_threshold(model_file: Path, good_image: Path, tmp_path: Path, capsys) -> None:
    line = expect_error(["report", str(model_file), str(good_image), "-o", str(tmp_path / "r.html"),
                         "--image-threshold", "nan", "-q"], capsys)
    assert "--image-threshold" in line


@pytest.mark.parametrize("fpr", ["nan", "0", "1", "inf"])
def test_calibrate_refuses_a_bad_fpr_before_scoring(fpr: str, model_file: Path, tmp_path: Path, capsys) -> None:
    line = expect_error(["calibrate", str(model_file), str(tmp_path / "no-such-folder"), "--fpr", fpr, "-q"], capsys)
    assert "--fpr" in line


def test_calibrate_checks_its_output_before_scoring(model_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "absent" / "m.safetensors"
    line = expect_error(["calibrate", str(model_file), str(tmp_path / "no-such-folder"), "-o", str(out), "-q"], capsys)
    assert str(out) in line


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-5", "1e9"])
def test_serve_refuses_a_bad_upload_limit(value: str, model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("fastapi")
    line = expect_error(["serve", str(model_file), "--max-upload-mb", value], capsys)
    assert "--max-upload-mb" in line


# ----------------------------------------------------------------------------- files
def test_predict_with_a_flipped_bit_in_the_model_is_one_line(model_file: Path, good_image: Path, tmp_path: Path,
                                                             capsys) -> None:
    data = bytearray(model_file.read_bytes())
    n = int.from_bytes(data[:8], "little")
    data[json.loads(data[8 : 8 + n])["mean"]["data_offsets"][0] + 8 + n + 6] ^= 0x01
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    line = expect_error(["predict", str(bad), str(good_image), "-o", str(tmp_path / "out"), "-q"], capsys)
    assert str(bad) in line and "checksum" in line


MALFORMED = {
    "backbone is a list": lambda m: m.update(backbone=[1, 2]),
    "layers are numbers": lambda m: m["backbone"].update(layers=[1, 2]),
    "calibration without thresholds": lambda m: m.update(calibration={"fpr": 0.1}),
    "crop size is a number": lambda m: m["preprocessing"].update(crop_size=7),
    "metadata version missing": lambda m: m.update(format_version=None),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_info_on_malformed_metadata_is_one_line(case: str, model_file: Path, tmp_path: Path, capsys) -> None:
    bad = rewrite_model(model_file, tmp_path / "malformed.safetensors", edit_meta=MALFORMED[case])
    line = expect_error(["info", str(bad)], capsys)
    assert str(bad) in line


def test_a_pickled_weights_file_is_one_line(texture_set: Path, tmp_path: Path, capsys) -> None:
    weights = tmp_path / "resnet18.pth"
    torch.save({"layer": torch.nn.Linear(2, 2)}, weights)  # a pickled module, not a state dict of tensors
    args = [a if a != "random" else str(weights) for a in TINY_ARGS]
    line = expect_error(["fit", str(texture_set / "train" / "good"), "-o", str(tmp_path / "m.safetensors"), *args],
                        capsys)
    assert str(weights) in line and "pickles Python objects" in line and "weights_only" not in line


# ----------------------------------------------------------------------------- the environment fails
def test_disk_full_during_save_is_one_line_and_keeps_the_old_model(
    model_file: Path, texture_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    target = tmp_path / "model.safetensors"
    shutil.copyfile(model_file, target)
    before = target.read_bytes()

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    line = expect_error(["calibrate", str(target), str(texture_set / "test" / "good"), "--fpr", "0.25", "-q"], capsys)
    assert str(target) in line and "No space left on device" in line
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


FAILURES = {
    "MemoryError": (MemoryError(), 2, "out of memory"),
    "CPU allocator": (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                                   "you tried to allocate 120000000000 bytes."), 2, "out of memory"),
    "CUDA out of memory": (RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore detail"), 2,
                           "out of memory"),
    "CUDA error": (RuntimeError("CUDA error: device-side assert triggered\nCUDA kernel errors ..."), 2, "device error"),
    "no CUDA": (AssertionError("Torch not compiled with CUDA enabled"), 2, "device error"),
    "disk full": (OSError(errno.ENOSPC, "No space left on device"), 2, "No space left on device"),
    "permission": (PermissionError(errno.EACCES, "Permission denied", "/some/file"), 2, "/some/file: Permission denied"),
    "decompression bomb": (Image.DecompressionBombError("Image size (200000000 pixels) exceeds limit"), 2,
                           "too large"),
    "a bug": (ZeroDivisionError("division by zero"), 1, "PADIM_DEBUG=1"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_every_exception_reaching_main_is_one_line(case: str, model_file: Path, monkeypatch, capsys) -> None:
    import padim.modelfile

    exc, code, needle = FAILURES[case]

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(padim.modelfile, "read_model", fail)
    assert main(["info", str(model_file)]) == code
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("padim: error: ") and needle in lines[0], lines


def test_padim_debug_shows_the_traceback_of_an_unexpected_error(model_file: Path, monkeypatch) -> None:
    import padim.modelfile

    def fail(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(padim.modelfile, "read_model", fail)
    monkeypatch.setenv("PADIM_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["info", str(model_file)])


def test_a_reader_that_stops_early_gets_no_traceback(model_file: Path) -> None:
    proc = subprocess.Popen([padim_script(), "info", str(model_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `padim info m | head -0`: the pipe is closed before padim writes
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert err == "" and proc.returncode == 141, (proc.returncode, err)


def test_argparse_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["predict"])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "padim predict --help" in lines[0], lines



def test_predict_options_are_refused_as_options_not_as_the_model_file(model_file: Path, good_image: Path,
                                                                     tmp_path: Path, capsys) -> None:
    line = expect_error(["predict", str(model_file), str(good_image), "-o", str(tmp_path / "o"), "--batch-size", "0"],
                        capsys)
    assert str(model_file) not in line and "batch_size" in line


def test_load_refuses_bad_parameters_before_reading_the_file(tmp_path: Path) -> None:
    from padim import PadimError

    with pytest.raises(PadimError, match="batch_size") as err:
        PaDiM.load(tmp_path / "absent.safetensors", batch_size=0)
    assert "absent" not in str(err.value)
