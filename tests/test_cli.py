"""The `padim` command end to end: fit, info, predict, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from camera_files import multi_frame, png_header, postscript_as_png, rotated_jpeg
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from padim.cli import main
from padim.modelfile import read_model, tensor_sha256

# The TINY configuration of conftest.py, as command-line options.
TINY_ARGS = ["--backbone", "resnet18", "--weights", "random", "--image-size", "64", "--crop-size", "none",
             "--n-features", "32", "--batch-size", "8", "-q"]
N_TRAIN = 12  # conftest's texture_set


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    # main() sets TQDM_DISABLE with -q; monkeypatching it first keeps that from leaking into other tests.
    monkeypatch.setenv("TQDM_DISABLE", "1")


def run_main(argv: list[str]) -> tuple[int, str]:
    """main(argv) with stdout captured, for session fixtures (which cannot use capsys)."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setenv("TQDM_DISABLE", "1")
        rc = main(argv)
    return rc, out.getvalue()


@pytest.fixture(scope="session")
def fitted(texture_set: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A model fitted by `padim fit` on the texture set's good parts, and what the command printed."""
    path = tmp_path_factory.mktemp("model") / "brick.safetensors"
    rc, out = run_main(["fit", str(texture_set / "train" / "good"), "-o", str(path), *TINY_ARGS])
    assert rc == 0, out
    return path, out


@pytest.fixture(scope="session")
def model_file(fitted: tuple[Path, str]) -> Path:
    return fitted[0]


def split_test_images(texture_set: Path) -> tuple[list[str], list[str]]:
    """Defective and good test images of the texture set."""
    defects = sorted(str(p) for p in (texture_set / "test").glob("*/*.png") if p.parent.name != "good")
    good = sorted(str(p) for p in (texture_set / "test" / "good").glob("*.png"))
    return defects, good


@pytest.fixture(scope="session")
def predicted(model_file: Path, texture_set: Path, tmp_path_factory: pytest.TempPathFactory):
    """`padim predict` on every test image: explicit files in reverse order, then the good folder."""
    defects, good = split_test_images(texture_set)
    out = tmp_path_factory.mktemp("predict") / "results"
    inputs = defects[::-1] + [str(texture_set / "test" / "good")]
    rc, stdout = run_main(["predict", str(model_file), *inputs, "-o", str(out), "--batch-size", "8", "-q"])
    assert rc == 0, stdout
    return out, defects[::-1] + good, set(defects)


def expect_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run main(argv), check exit code 2 and exactly one error line on stderr; return that line."""
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2, captured
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("padim: error: ")
    return lines[0]


def padim_script() -> str:
    """The installed `padim` console script."""
    found = shutil.which("padim") or str(Path(sys.executable).parent / "padim")
    assert os.access(found, os.X_OK), f"console script not installed: {found}"
    return found


def run_script(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([padim_script(), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def write_png(path: Path, size: int = 48, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def rewrite_model(src: Path, dst: Path, edit_meta=None, edit_tensors=None) -> Path:
    """Copy a model file through safetensors' save_file, changing its metadata JSON and/or tensors."""
    with safe_open(str(src), framework="pt") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(header["padim"])
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    if "tensor_sha256" in meta:  # a consistent file, so that the checks behind the checksum are reached
        meta["tensor_sha256"] = tensor_sha256(tensors)
    save_file(tensors, str(dst), metadata={**header, "padim": json.dumps(meta)})
    return dst


# ---------------------------------------------------------------------------------------------- fit, info
def test_fit_writes_a_model_of_the_requested_configuration(fitted: tuple[Path, str]) -> None:
    path, stdout = fitted
    _, meta = read_model(path)
    assert meta["backbone"]["name"] == "resnet18"
    assert meta["n_features"] == 32 and meta["n_samples_seen"] == N_TRAIN
    assert meta["preprocessing"]["image_size"] == [64, 64] and meta["preprocessing"]["crop_size"] is None
    assert meta["backbone"]["weights"]["kind"] == "random"
    assert str(path) in stdout and f"on {N_TRAIN} images" in stdout


def test_info_shows_backbone_features_training_images_and_random_weights(
    model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(model_file)]) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out
    assert "32 of 448" in out
    assert f"training images {N_TRAIN}" in out
    assert "RANDOM WEIGHTS" in out
    assert re.search(r"engine here +openvino [0-9.]+ on cpu, \d+ threads", out)


def test_fit_log_names_the_engine_and_an_unknown_engine_is_refused(tmp_path: Path, capsys) -> None:
    good = tmp_path / "good"
    good.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(good / f"{i}.png")
    args = ["fit", str(good), "-o", str(tmp_path / "m.safetensors"), "--backbone", "resnet18", "--weights", "random",
            "--image-size", "32", "--crop-size", "none", "--n-features", "8"]
    assert main([*args, "--engine", "onnxruntime", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert re.search(r"with onnxruntime [0-9.]+ on cpu, 1 threads", captured.out)
    with pytest.raises(SystemExit):
        main([*args, "--engine", "tensorrt"])
    assert "invalid choice: 'tensorrt'" in capsys.readouterr().err


def test_info_json_is_the_file_metadata(model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(model_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == read_model(model_file)[1]


def test_info_prints_what_the_library_says(model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from padim.reporting.model_info import model_file_info

    for as_json in (False, True):
        assert main(["info", str(model_file), *(["--json"] if as_json else [])]) == 0
        assert capsys.readouterr().out == model_file_info(model_file, as_json=as_json) + "\n"


# ---------------------------------------------------------------------------------------------- predict
def test_predict_scores_csv_and_json_agree_one_row_per_image_in_input_order(predicted) -> None:
    out, expected_order, _ = predicted
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    doc = json.loads((out / "scores.json").read_text())
    assert [r["image"] for r in rows] == expected_order
    assert [r["image"] for r in doc["images"]] == expected_order
    assert [float(r["score"]) for r in rows] == [r["score"] for r in doc["images"]]
    assert all(np.isfinite(float(r["score"])) and float(r["score"]) > 0 for r in rows)


def test_predict_writes_one_overlay_per_image_at_original_size(predicted) -> None:
    out, expected_order, _ = predicted
    rows = json.loads((out / "scores.json").read_text())["images"]
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == len(expected_order)
    assert sorted(out / r["overlay"] for r in rows) == overlays
    for row in rows:
        with Image.open(row["image"]) as original, Image.open(out / row["overlay"]) as panel:
            w, h = original.size
            assert panel.size == (2 * w + 4, h)


def test_predict_scores_defects_higher_than_good_parts(predicted) -> None:
    out, _, defects = predicted
    rows = json.loads((out / "scores.json").read_text())["images"]
    bad = [r["score"] for r in rows if r["image"] in defects]
    good = [r["score"] for r in rows if r["image"] not in defects]
    assert len(bad) == 8 and len(good) == 4
    assert np.mean(bad) > np.mean(good)


# ---------------------------------------------------------------------------------------------- bad images
def text_as_png(path: Path) -> None:
    path.write_text("definitely not a PNG\n" * 20)


def truncated_png(path: Path) -> None:
    write_png(path, size=64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty_file(path: Path) -> None:
    path.write_bytes(b"")


def svg_file(path: Path) -> None:
    path.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>')


@pytest.mark.parametrize("make, name", [(text_as_png, "corrupt.png"), (truncated_png, "truncated.png"),
                                        (empty_file, "empty.png"), (svg_file, "drawing.svg"),
                                        (postscript_as_png, "postscript.png")])
def test_predict_bad_image_exits_2_naming_the_file(
    make, name: str, model_file: Path, texture_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / name
    make(bad)
    good = texture_set / "test" / "good" / "000.png"
    out = tmp_path / "results"
    line = expect_error(["predict", str(model_file), str(good), str(bad), "-o", str(out), "-q"], capsys)
    assert str(bad) in line
    assert not (out / "scores.csv").exists()


def test_predict_on_an_empty_input_folder_exits_2_naming_it(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    line = expect_error(["predict", str(model_file), str(folder), "-o", str(tmp_path / "out"), "-q"], capsys)
    assert str(folder) in line and "no images" in line


def test_fit_empty_train_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "good"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images here")
    line = expect_error(["fit", str(folder), "-o", str(tmp_path / "m.safetensors"), *TINY_ARGS], capsys)
    assert str(folder) in line and "no images" in line
    assert not (tmp_path / "m.safetensors").exists()


def test_fit_nonexistent_train_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "does-not-exist"
    line = expect_error(["fit", str(folder), "-o", str(tmp_path / "m.safetensors"), *TINY_ARGS], capsys)
    assert str(folder) in line


def test_failed_fit_leaves_the_existing_model_byte_identical(
    model_file: Path, texture_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "model.safetensors"
    shutil.copyfile(model_file, target)
    before = target.read_bytes()
    train = tmp_path / "train"
    train.mkdir()
    for src in sorted((texture_set / "train" / "good").glob("*.png"))[:3]:
        shutil.copyfile(src, train / src.name)
    truncated_png(train / "zz_broken.png")
    line = expect_error(["fit", str(train), "-o", str(target), *TINY_ARGS], capsys)
    assert str(train / "zz_broken.png") in line
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "train"]  # no temp files left


# ---------------------------------------------------------------------------------------------- bad models
def random_bytes(model_file: Path, dst: Path) -> Path:
    dst.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return dst


def plain_safetensors(model_file: Path, dst: Path) -> Path:
    save_file({"weight": torch.zeros(3, 3)}, str(dst), metadata={"author": "someone else"})
    return dst


def other_format_version(model_file: Path, dst: Path) -> Path:
    return rewrite_model(model_file, dst, edit_meta=lambda m: m.update(format_version=99))


def tensor_shape_mismatch(model_file: Path, dst: Path) -> Path:
    def cut(tensors: dict) -> None:
        tensors["mean"] = tensors["mean"][:-1].clone()

    return rewrite_model(model_file, dst, edit_tensors=cut)


@pytest.mark.parametrize("make, expected", [
    (random_bytes, "not a torch-padim model"),
    (plain_safetensors, "not a torch-padim model"),
    (other_format_version, "version 99"),
    (tensor_shape_mismatch, "'mean'"),
])
def test_predict_with_a_bad_model_file_exits_2_naming_it(
    make, expected: str, model_file: Path, texture_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = make(model_file, tmp_path / "bad.safetensors")
    good = texture_set / "test" / "good" / "000.png"
    line = expect_error(["predict", str(bad), str(good), "-o", str(tmp_path / "out"), "-q"], capsys)
    assert str(bad) in line and expected in line


def test_predict_with_model_metadata_missing_a_key_exits_2(
    model_file: Path, texture_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = rewrite_model(model_file, tmp_path / "nobackbone.safetensors", edit_meta=lambda m: m.pop("backbone"))
    good = texture_set / "test" / "good" / "000.png"
    line = expect_error(["predict", str(bad), str(good), "-o", str(tmp_path / "out"), "-q"], capsys)
    assert str(bad) in line and "backbone" in line


@pytest.mark.parametrize("edit", [
    lambda m: m.update(n_features="abc"),
    lambda m: m.update(feature_shape="x"),
    lambda m: m.update(n_samples_seen="many"),
], ids=["n_features", "feature_shape", "n_samples_seen"])
def test_predict_with_malformed_metadata_values_exits_2(
    edit, model_file: Path, texture_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = rewrite_model(model_file, tmp_path / "malformed.safetensors", edit_meta=edit)
    good = texture_set / "test" / "good" / "000.png"
    line = expect_error(["predict", str(bad), str(good), "-o", str(tmp_path / "out"), "-q"], capsys)
    assert str(bad) in line


def test_model_whose_metadata_is_not_a_json_object_exits_2(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with safe_open(str(model_file), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    bad = tmp_path / "listmeta.safetensors"
    save_file(tensors, str(bad), metadata={"padim": "[1, 2]"})
    line = expect_error(["info", str(bad)], capsys)
    assert str(bad) in line and "not a torch-padim model" in line


def test_rewritten_model_with_unchanged_metadata_still_predicts(
    model_file: Path, texture_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Control for the rewrite helper: it is the edit, not the rewriting, that the loader refuses."""
    copy = rewrite_model(model_file, tmp_path / "copy.safetensors")
    good = texture_set / "test" / "good" / "000.png"
    assert main(["predict", str(copy), str(good), "-o", str(tmp_path / "out"), "--no-overlays", "-q"]) == 0
    assert len((tmp_path / "out" / "scores.csv").read_text().splitlines()) == 2


def test_info_on_a_bad_model_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = random_bytes(tmp_path, tmp_path / "junk.safetensors")
    assert str(bad) in expect_error(["info", str(bad)], capsys)


# ---------------------------------------------------------------------------------------------- environment
def test_predict_into_a_folder_under_a_file_exits_2(
    model_file: Path, texture_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "results"
    good = texture_set / "test" / "good" / "000.png"
    line = expect_error(["predict", str(model_file), str(good), "-o", str(out), "-q"], capsys)
    assert str(out) in line


def test_fit_into_a_folder_under_a_file_exits_2(
    texture_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "model.safetensors"
    line = expect_error(["fit", str(texture_set / "train" / "good"), "-o", str(out), *TINY_ARGS], capsys)
    assert str(out) in line
    assert blocker.read_text() == "x"


def test_weights_pointing_to_a_missing_file_exits_2_naming_it(
    texture_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "resnet18-missing.pth"
    args = [a if a != "random" else str(missing) for a in TINY_ARGS]
    line = expect_error(["fit", str(texture_set / "train" / "good"), "-o", str(tmp_path / "m.safetensors"), *args],
                        capsys)
    assert str(missing) in line


def test_missing_backbone_weights_subprocess_says_how_to_provide_them(
    texture_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch_home, hf_home = tmp_path / "torch-home", tmp_path / "hf-home"
    torch_home.mkdir()
    hf_home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    args = [a for a in TINY_ARGS if a not in ("--weights", "random")]
    proc = run_script(["fit", str(texture_set / "train" / "good"), "-o", str(tmp_path / "m.safetensors"), *args])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "resnet18" in lines[0] and "--weights" in lines[0]
    assert str(torch_home / "hub" / "checkpoints") in lines[0]  # where to put the download
    assert not (tmp_path / "m.safetensors").exists()


def test_subprocess_predict_on_a_corrupt_image_is_one_line_exit_2(
    model_file: Path, texture_set: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "broken.png"
    truncated_png(bad)
    good = texture_set / "test" / "good" / "000.png"
    proc = run_script(["predict", str(model_file), str(good), str(bad), "-o", str(tmp_path / "out"), "-q"])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("padim: error: ") and str(bad) in lines[0], proc.stderr


def test_subprocess_info_exits_0(model_file: Path) -> None:
    proc = run_script(["info", str(model_file)])
    assert proc.returncode == 0 and proc.stderr == ""
    assert "RANDOM WEIGHTS" in proc.stdout


# ---------------------------------------------------------------------------------------------- camera pipeline inputs
def test_predict_refuses_a_header_bomb_in_one_line_and_max_pixels_sets_the_limit(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bomb = png_header(tmp_path / "bomb.png", 10_000, 10_000)  # 97 kB of header, 10^8 pixels
    line = expect_error(["predict", str(model_file), str(bomb), "-o", str(tmp_path / "out"), "-q"], capsys)
    assert str(bomb) in line and "10000x10000 = 100,000,000 pixels exceeds the limit of 40,000,000" in line
    small = write_png(tmp_path / "small.png", size=48)  # 2,304 pixels
    line = expect_error(["predict", str(model_file), str(small), "-o", str(tmp_path / "out"), "--max-pixels", "2000",
                         "-q"], capsys)
    assert str(small) in line and "exceeds the limit of 2,000 pixels" in line
    assert main(["predict", str(model_file), str(small), "-o", str(tmp_path / "out"), "--max-pixels", "2304",
                 "--no-overlays", "-q"]) == 0


def test_pillows_bomb_error_is_one_line(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = png_header(tmp_path / "huge.png", 60_000, 60_000)
    line = expect_error(["predict", str(model_file), str(bomb), "-o", str(tmp_path / "out"), "-q"], capsys)
    assert str(bomb) in line and "pixels" in line


def test_multi_frame_input_is_scored_on_its_first_frame_with_a_one_line_warning(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gif = multi_frame(tmp_path / "burst.gif", 4)
    assert main(["predict", str(model_file), str(gif), "-o", str(tmp_path / "out"), "-q"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"padim: warning: {gif}: holds 4 frames or pages; only the first is used"]


def test_fit_skips_hidden_and_appledouble_files_and_says_how_many(
    texture_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = tmp_path / "train"
    shutil.copytree(texture_set / "train" / "good", train)
    Image.new("RGB", (96, 96)).save(train / ".thumb.png")  # black: must not become a good part
    (train / "._000.png").write_bytes(b"\x00\x05\x16\x07" + b"\0" * 200)  # macOS AppleDouble: used to abort the fit
    assert main(["fit", str(train), "-o", str(tmp_path / "m.safetensors"), *TINY_ARGS]) == 0
    captured = capsys.readouterr()
    assert f"on {N_TRAIN} images" in captured.out
    assert captured.err.splitlines() == [(f"padim: warning: {train}: skipped 2 hidden image file(s) "
                                          "(names starting with '.', e.g. macOS ._* files)")]


def test_scores_csv_escapes_file_names_that_look_like_formulas(
    model_file: Path, texture_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(texture_set / "test" / "good" / "000.png", tmp_path / "=1+2.png")
    shutil.copyfile(texture_set / "test" / "good" / "001.png", tmp_path / "@cmd.png")
    assert main(["predict", str(model_file), "=1+2.png", "@cmd.png", "-o", "out", "--no-overlays", "-q"]) == 0
    with open(tmp_path / "out" / "scores.csv", newline="") as f:
        assert [r["image"] for r in csv.DictReader(f)] == ["'=1+2.png", "'@cmd.png"]
    assert [r["image"] for r in json.loads((tmp_path / "out" / "scores.json").read_text())["images"]] == [
        "=1+2.png", "@cmd.png"]  # JSON is no spreadsheet: names as they are


def test_predict_reads_camera_jpegs_upright(model_file: Path, tmp_path: Path) -> None:
    jpeg = rotated_jpeg(tmp_path / "cam.jpg", 6)  # stored 40 wide x 24 high, shown 24 x 40
    assert main(["predict", str(model_file), str(jpeg), "-o", str(tmp_path / "out"), "-q"]) == 0
    row = json.loads((tmp_path / "out" / "scores.json").read_text())["images"][0]
    with Image.open(tmp_path / "out" / row["overlay"]) as panel:
        assert panel.size == (2 * 24 + 4, 40)
