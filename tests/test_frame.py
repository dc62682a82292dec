"""The frame check: blank, black, white, 1x1 and foreign frames are never 'OK'; good frames pass."""

from __future__ import annotations

import copy
import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from padim import PaDiM, PadimError
from padim.errors import PadimWarning
from padim.cli import main
from padim.data import as_items
from padim.embedding import embed_positions, native_blocks, split_by_tap
from padim.errors import InputError
from padim.fitting import accumulate
from padim.frame import BLANK, UNLIKE, FrameStats, frame_descriptors, oas_weight, shrunk_covariance
from padim.gaussian import GaussianStats
from padim.modelfile import CHECKSUM_KEY, read_model, tensor_sha256
from padim.evaluation.synthetic import load_split, make_inspection_set

from conftest import TINY

SIZE = 128  # small real-photo frames keep the real-weights fit to seconds


# ----------------------------------------------------------------------------- real Lite0 weights, real photos
@pytest.fixture(scope="module")
def brick(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    """50 good training crops of the brick photo and 10 good crops from its test band (never fitted on)."""
    category = make_inspection_set(tmp_path_factory.mktemp("frame"), "brick", n_train=50, n_test_good=10,
                                   n_test_defect=0, size=SIZE, seed=1)
    train, test, _ = load_split(category)
    return train, test


@pytest.fixture(scope="module")
def lite0(brick) -> PaDiM:
    """The default backbone (real ImageNet weights), fitted on 40 crops, calibrated on the 10 held out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PadimWarning)  # 10 calibration images: the threshold is their maximum
        return PaDiM(image_size=SIZE, crop_size=None, batch_size=16, holdout=0.2, seed=0).fit(brick[0])


def uniform(value: int, size: int = SIZE) -> np.ndarray:
    """A frame of one grey level."""
    return np.full((size, size, 3), value, np.uint8)


def photo(name: str) -> np.ndarray:
    """Another scikit-image photo as an RGB frame: foreign to a brick model."""
    import skimage.data

    img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    return np.asarray(img.resize((SIZE, SIZE), Image.BICUBIC))


def texture(name: str) -> np.ndarray:
    """A crop of another texture of the demo set: the closest kind of foreign frame."""
    import skimage.data

    return np.repeat(getattr(skimage.data, name)()[:SIZE, :SIZE, None], 3, axis=2)


ODD_FRAMES = {
    "uniform gray": (lambda: uniform(128), BLANK),
    "black": (lambda: uniform(0), BLANK),
    "white": (lambda: uniform(255), BLANK),
    "1x1": (lambda: uniform(90, size=1), BLANK),
    "sensor noise (covered lens)": (lambda: np.random.default_rng(0).normal(40, 1.5, (SIZE, SIZE, 3)).clip(0, 255)
                                    .astype(np.uint8), BLANK),
    "coffee photo": (lambda: photo("coffee"), UNLIKE),
    "camera photo": (lambda: photo("camera"), UNLIKE),
    "gravel texture": (lambda: texture("gravel"), UNLIKE),
    "grass texture": (lambda: texture("grass"), UNLIKE),
}


@pytest.mark.parametrize("case", list(ODD_FRAMES))
def test_blank_and_foreign_frames_are_rejected_with_their_reason(lite0: PaDiM, case: str) -> None:
    make, reason = ODD_FRAMES[case]
    pred = lite0.predict([make()])
    assert pred.decisions is not None and bool(pred.decisions[0]), (case, pred.scores, pred.frame_scores)
    assert reason in pred.reasons[0], pred.reasons
    # Either check alone catches the frames without any structure: the pooled-feature Gaussian too.
    assert pred.frame_scores[0] > pred.frame_threshold
    if reason == UNLIKE:
        assert not pred.blank[0]  # foreign frames have contrast: the Gaussian catches them


def test_good_frames_pass_the_frame_check(lite0: PaDiM, brick) -> None:
    train, test_good = brick
    cal = lite0.calibration_
    held = lite0.split_holdout(train)[1]
    assert cal.frame_scores is not None and len(cal.frame_scores) == len(held) == 10
    # At most the target FPR's share of the calibration images (here: none) exceed the frame threshold ...
    assert np.mean(cal.frame_scores > cal.frame_threshold) <= cal.fpr
    # ... and good crops from the photo's other band, never seen by fit or calibration, pass it too.
    pred = lite0.predict(test_good)
    assert not pred.blank.any(), pred.contrast
    assert (pred.frame_scores <= pred.frame_threshold).all(), (pred.frame_scores, pred.frame_threshold)
    assert not any(BLANK in r or UNLIKE in r for r in pred.reasons), pred.reasons
    assert all(r in ("", "anomaly score above threshold") for r in pred.reasons)


def test_blank_frames_are_caught_before_calibration(lite0: PaDiM) -> None:
    uncalibrated = copy.copy(lite0)
    uncalibrated.calibration_ = None
    pred = uncalibrated.predict([uniform(128), photo("coffee")])
    assert pred.decisions is None and pred.frame_threshold is None  # no thresholds: no verdicts ...
    assert pred.reasons == [BLANK, ""]  # ... but a blank frame is named
    given = uncalibrated.predict([uniform(128)], image_threshold=1e9)
    assert bool(given.decisions[0]) and given.reasons == [BLANK]  # defective whatever its anomaly score


def test_frame_statistics_and_verdicts_survive_save_and_load(lite0: PaDiM, brick, tmp_path: Path) -> None:
    path = tmp_path / "lite0.safetensors"
    lite0.save(path)  # without the patch statistics: the frame check still travels
    loaded = PaDiM.load(path)
    assert torch.equal(loaded.frame_.mean, lite0.frame_.mean)
    assert torch.equal(loaded.frame_.cholesky, lite0.frame_.cholesky)
    assert loaded.frame_.contrast_min == lite0.frame_.contrast_min
    assert np.array_equal(loaded.calibration_.frame_scores, lite0.calibration_.frame_scores)
    frames = [uniform(0), photo("camera"), *brick[1][:3]]
    a, b = lite0.predict(frames), loaded.predict(frames)
    assert np.array_equal(a.frame_scores, b.frame_scores) and a.reasons == b.reasons
    assert np.array_equal(a.decisions, b.decisions)
    meta = read_model(path)[1]
    assert meta["frame"]["n_images"] == 40 and meta["calibration"]["frame_threshold"] == pytest.approx(a.frame_threshold)


# ----------------------------------------------------------------------------- statistics (tiny random backbone)
@pytest.fixture(scope="module")
def split(texture_set: Path):
    return load_split(texture_set)


@pytest.fixture(scope="module")
def fitted(split) -> PaDiM:
    return PaDiM(**TINY).fit(split[0])


def assert_same_frames(a: PaDiM, b: PaDiM) -> None:
    fa, fb = a.frame_stats_, b.frame_stats_
    assert fa.n == fb.n == a.n_samples_seen_
    assert torch.allclose(fa.gaussian.mean, fb.gaussian.mean, rtol=0, atol=1e-9)
    # (the stored row blocks' redundant upper parts differ after a round trip: compare what is read)
    assert torch.allclose(fa.gaussian.covariance(0.0), fb.gaussian.covariance(0.0), rtol=1e-9, atol=1e-12)
    assert fa.contrast_min == fb.contrast_min
    assert torch.allclose(a.frame_.cholesky, b.frame_.cholesky, rtol=1e-9, atol=1e-9)


def test_frame_statistics_of_partial_fit_and_merge_equal_one_fit(split, fitted) -> None:
    train = split[0]
    assert fitted.frame_stats_.n == len(train) and fitted.frame_stats_.gaussian.dim == 2 * 32
    assert_same_frames(PaDiM(**TINY).fit(train[:5]).partial_fit(train[5:]), fitted)
    a, b = PaDiM(**TINY).fit(train[:7]), PaDiM(**TINY).fit(train[7:])
    assert_same_frames(a.merge(b), fitted)


def test_frame_statistics_match_a_direct_computation(split, fitted) -> None:
    emb = torch.from_numpy(fitted.transform(split[0])).flatten(2).double()  # (N, d, P)
    summary = torch.cat([emb.mean(2), emb.std(2, correction=0)], dim=1)
    assert torch.allclose(fitted.frame_stats_.gaussian.mean[0], summary.mean(0), atol=1e-5)
    cov = torch.cov(summary.T)
    assert torch.allclose(fitted.frame_stats_.gaussian.covariance(0.0)[0], cov, atol=1e-5 * float(cov.abs().max()))


def test_frame_statistics_survive_a_resumable_save(fitted, split, tmp_path: Path) -> None:
    path = tmp_path / "full.safetensors"
    fitted.save(path, statistics=True)
    loaded = PaDiM.load(path)
    assert_same_frames(loaded, fitted)
    more = PaDiM(**TINY).fit(split[0][:6])
    more.save(path, statistics=True)
    assert_same_frames(PaDiM.load(path).partial_fit(split[0][6:]), fitted)


def strip_frame(src: Path, dst: Path, version: int = 1) -> Path:
    """A copy of a model file as an older torch-padim wrote it: no frame statistics."""
    from safetensors.torch import save_file

    tensors, meta = read_model(src)
    tensors = {k: v.clone() for k, v in tensors.items() if not k.startswith("frame_") and k != "calibration_frame_scores"}
    meta.pop("frame")
    if meta.get("calibration"):
        meta["calibration"].pop("frame_threshold", None)
    meta["format_version"] = version
    meta.pop(CHECKSUM_KEY, None)  # version 1 files had no checksum either
    save_file(tensors, str(dst), metadata={"padim": json.dumps(meta)})
    return dst


def test_files_from_before_the_frame_check_load_with_it_off_and_say_so(fitted, split, tmp_path: Path, capsys) -> None:
    fitted.save(tmp_path / "new.safetensors", statistics=True)
    old = strip_frame(tmp_path / "new.safetensors", tmp_path / "old.safetensors")
    with pytest.warns(PadimWarning, match="saved before the frame check"):
        loaded = PaDiM.load(old)
    assert loaded.frame_ is None and loaded.frame_stats_ is None
    pred = loaded.predict([uniform(128, 64)], image_threshold=1e9)
    assert pred.frame_scores is None and pred.reasons == [""] and not pred.decisions[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PadimWarning)
        loaded.partial_fit(split[0][:2])  # cannot resume frame statistics it never had: stays off
    assert loaded.frame_ is None
    with pytest.warns(PadimWarning, match="frame check is off"):
        PaDiM(**TINY).fit(split[0][:3]).merge(loaded)
    assert main(["info", str(old)]) == 0
    assert "frame check     off" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "new.safetensors")]) == 0
    assert "frame check     on" in capsys.readouterr().out


def _set(key: str, value):
    def change(t: dict, m: dict) -> None:
        if key in t:
            t[key] = value(t[key])
        else:
            m["frame"][key] = value
    return change


@pytest.mark.parametrize("change, expected", [
    (_set("frame_mean", lambda t: t.index_fill(0, torch.tensor([3]), float("nan"))), "NaN"),
    (_set("frame_scatter", lambda t: t[:-1].contiguous()), "frame_scatter"),
    (_set("frame_mean", lambda t: t.float()), "frame_mean"),
    (_set("contrast_min", float("nan")), "contrast_min"),
    (_set("contrast_min", -1.0), "contrast_min"),
    (_set("n_images", 3), "frame statistics of 3 images"),
], ids=["nan mean", "short scatter", "float32 mean", "nan contrast", "negative contrast", "count"])
def test_bad_frame_statistics_are_refused(fitted, tmp_path: Path, change, expected: str) -> None:
    from safetensors.torch import save_file

    fitted.save(tmp_path / "good.safetensors")
    tensors, meta = read_model(tmp_path / "good.safetensors")
    tensors = {k: v.clone() for k, v in tensors.items()}
    change(tensors, meta)
    meta[CHECKSUM_KEY] = tensor_sha256(tensors)  # a consistent file: the checks behind the checksum must refuse it
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"padim": json.dumps(meta)})
    with pytest.raises(PadimError, match=expected):
        PaDiM.load(bad)


def test_a_version_that_is_not_an_integer_is_refused(fitted, tmp_path: Path) -> None:
    fitted.save(tmp_path / "m.safetensors")
    stripped = strip_frame(tmp_path / "m.safetensors", tmp_path / "true.safetensors", version=True)  # True == 1
    with pytest.raises(PadimError, match="version True"):
        PaDiM.load(stripped)


def test_shrinkage_keeps_few_samples_invertible_and_matches_scikit_learn() -> None:
    from sklearn.covariance import OAS

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 40)) * rng.uniform(0.1, 10, size=40)  # n < D, channels of different scales
    stats = GaussianStats.empty(1, 40, "cpu")
    stats.update(torch.from_numpy(x)[None])
    cov = shrunk_covariance(stats, 0.01)
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())
    assert torch.allclose(cov.diagonal(), torch.from_numpy(x.var(0, ddof=1)) + 0.01)
    z = (x - x.mean(0)) / x.std(0)  # the weight is scikit-learn's OAS weight of the standardised data
    sk = OAS(assume_centered=True).fit(z).shrinkage_
    assert oas_weight(torch.from_numpy(np.cov(z.T, bias=True)), 12) == pytest.approx(sk, rel=1e-9)
    one = GaussianStats.empty(1, 40, "cpu")
    one.update(torch.from_numpy(x[:1])[None])
    assert torch.equal(shrunk_covariance(one, 0.01), 0.01 * torch.eye(40, dtype=torch.float64))
    assert FrameStats.empty(5).contrast_min == float("inf")


# ----------------------------------------------------------------------------- where the verdicts are written
def test_scores_table_and_service_report_the_reason(fitted, texture_set: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    fitted.save(model)
    gray = tmp_path / "gray.png"
    Image.fromarray(uniform(128, 64)).save(gray)
    good = sorted((texture_set / "test" / "good").glob("*.png"))[0]
    out = tmp_path / "out"
    assert main(["predict", str(model), str(gray), str(good), "-o", str(out), "--image-threshold", "1e9",
                 "--no-overlays", "-q"]) == 0
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["reason"] for r in rows] == [BLANK, ""] and [r["defective"] for r in rows] == ["True", "False"]
    assert "frame_score" in rows[0]
    assert json.loads((out / "scores.json").read_text())["images"][0]["reason"] == BLANK

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from padim.deployment.service import create_app

    with TestClient(create_app(fitted)) as client:
        body = client.post("/predict", files={"file": ("gray.png", gray.read_bytes(), "image/png")}).json()
    assert body["reason"] == BLANK and body["frame_score"] > 0


# ----------------------------------------------------------------------------- descriptors at each tap's resolution
@pytest.mark.parametrize("grid_size, tap_sizes", [(16, (16, 8, 4)), (13, (13, 7, 4)), (12, (12, 6, 5))])
def test_descriptors_read_at_each_taps_resolution_equal_a_float64_computation(grid_size, tap_sizes) -> None:
    gen = torch.Generator().manual_seed(0)
    maps = [torch.randn(3, c, s, s, generator=gen) * (1 + i) + 5 * i for i, (c, s) in enumerate(zip((5, 7, 9), tap_sizes))]
    kept = split_by_tap(torch.tensor([0, 2, 4, 5, 6, 9, 12, 13, 14, 15, 20]), (5, 7, 9))
    emb = embed_positions(maps, kept)  # (P, B, d) on the first tap's grid
    before = emb.clone()
    grid = (grid_size, grid_size)
    blocks = native_blocks(kept, [m.shape[-2:] for m in maps], grid)
    got = frame_descriptors(emb, grid, blocks)
    x = emb.double()
    want = torch.cat([x.mean(0), x.std(0, correction=0)], dim=1)
    tol = 2e-6 * float(want.abs().max())  # float32 sums, float64 reference
    assert torch.allclose(got, want, rtol=0, atol=tol)
    assert torch.allclose(frame_descriptors(emb), want, rtol=0, atol=tol)
    assert torch.equal(emb, before)  # the engine's buffer is never overwritten
    steps = [(sh, sw) for _, _, sh, sw in blocks]
    assert steps[0] == (1, 1) and all(grid_size % s == 0 or (sh, sw) == (1, 1)
                                      for s, (sh, sw) in zip(tap_sizes[1:], steps[1:]))


def test_a_nan_in_a_deep_taps_repeated_patch_is_refused_naming_the_image(split) -> None:
    model = PaDiM(**TINY)
    model._init_network()
    stats, frames = model.empty_stats(), FrameStats.empty(model.empty_stats().dim)
    batches = list(model._embeddings(as_items(split[0][:4]), "fit"))
    batch, emb = batches[0]
    emb = emb.clone()
    (h, w), (*_, sh, sw) = model.net_.grid, model.net_.descriptor_blocks[-1]
    assert sh > 1 and sw > 1  # the deepest tap is read at its own resolution
    # a NaN in the deepest tap's last patch, repeated over the positions it covers, as the engine repeats it
    emb.view(h, w, emb.shape[1], -1)[h - sh :, w - sw :, 2, -1] = float("nan")
    with pytest.raises(InputError, match=batch.names[2]):
        accumulate([(batch, emb)], stats, frames, model.preprocessing.std, grid=model.net_.grid,
                   blocks=model.net_.descriptor_blocks)
