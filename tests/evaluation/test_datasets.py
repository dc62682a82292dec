"""Dataset loaders on miniature MVTec AD and STC trees built from real photos, and their masks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import error
from padim.data import Preprocess
from padim.images import image_shape, read_image
from padim.evaluation.datasets import (
    MVTEC_CATEGORIES,
    MVTEC_OBJECTS,
    MVTEC_TEXTURES,
    MaskRef,
    Sample,
    Split,
    mvtec,
    mvtec_category,
    stc,
)
from padim.evaluation.folders import folder_split
from padim.evaluation.transforms import transform_masks
from padim.evaluation.synthetic import DEFECT_KINDS, load_texture, make_inspection_set, paint_defect

FRAME = (48, 80)  # STC frames: non-square on purpose
STC_TRAIN = {"01_001": 5, "01_002": 12}  # 01_002 has unpadded names 0.jpg .. 11.jpg
STC_TEST = {"01_0014": [0, 0, 1, 1], "01_0015": [0, 1, 0]}


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MVTec AD root with two official categories (carpet, grid) and one custom one (widget)."""
    root = tmp_path_factory.mktemp("mvtec")
    build = tmp_path_factory.mktemp("build")
    for texture, category, seed in (("brick", "carpet", 0), ("grass", "grid", 1)):
        made = make_inspection_set(build, texture, n_train=4, n_test_good=2, n_test_defect=4, size=64, seed=seed)
        made.rename(root / category)
    shutil.copytree(root / "carpet", root / "widget")
    return root


@pytest.fixture()
def mvtec_copy(mvtec_root: Path, tmp_path: Path) -> Path:
    """A private copy of the MVTec root that a test may damage."""
    return Path(shutil.copytree(mvtec_root, tmp_path / "mvtec"))


def _frame(rng: np.random.Generator) -> np.ndarray:
    """A random RGB crop of a real photo, FRAME sized."""
    photo = load_texture("gravel")
    top, left = rng.integers(0, photo.shape[0] - FRAME[0]), rng.integers(0, photo.shape[1] - FRAME[1])
    crop = photo[top : top + FRAME[0], left : left + FRAME[1]]
    return np.repeat(crop[..., None], 3, axis=2)


def _save_jpg(path: Path, pixels: np.ndarray) -> None:
    """Write a high-quality JPEG, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def build_stc(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A miniature STC tree; returns each test video's (clean frames, painted masks)."""
    rng = np.random.default_rng(0)
    for video, n in STC_TRAIN.items():
        for i in range(n):
            name = f"{i}.jpg" if video == "01_002" else f"{i:03d}.jpg"
            _save_jpg(root / "training" / "frames" / video / name, _frame(rng))
    truth = {}
    for k, (video, labels) in enumerate(STC_TEST.items()):
        clean = np.stack([_frame(rng) for _ in labels])
        masks = np.zeros((len(labels), *FRAME), dtype=bool)
        for i, label in enumerate(labels):
            frame = clean[i]
            if label:
                frame, masks[i] = paint_defect(frame, "hole", rng)
            _save_jpg(root / "testing" / "frames" / video / f"{i:03d}.jpg", frame)
        (root / "testing" / "test_pixel_mask").mkdir(parents=True, exist_ok=True)
        (root / "testing" / "test_frame_mask").mkdir(parents=True, exist_ok=True)
        stack = masks.astype(np.uint8) if k == 0 else masks  # both dtypes occur in the wild
        np.save(root / "testing" / "test_pixel_mask" / f"{video}.npy", stack)
        np.save(root / "testing" / "test_frame_mask" / f"{video}.npy", np.array(labels, dtype=np.uint8))
        truth[video] = (clean, masks)
    return truth


@pytest.fixture(scope="module")
def stc_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("stc")
    return root, build_stc(root)


@pytest.fixture()
def stc_copy(stc_data: tuple[Path, dict], tmp_path: Path) -> Path:
    return Path(shutil.copytree(stc_data[0], tmp_path / "stc"))


# ----------------------------------------------------------------------------------------------- MVTec AD


def test_category_constants() -> None:
    assert len(MVTEC_CATEGORIES) == len(set(MVTEC_CATEGORIES)) == 15
    assert set(MVTEC_TEXTURES).isdisjoint(MVTEC_OBJECTS) and len(MVTEC_TEXTURES) == 5


def test_mvtec_category_layout(mvtec_root: Path) -> None:
    split = mvtec_category(mvtec_root, "carpet")
    assert isinstance(split, Split) and split.name == "carpet"
    assert [p.name for p in split.train] == ["000.png", "001.png", "002.png", "003.png"]
    assert all(p.parent == mvtec_root / "carpet" / "train" / "good" for p in split.train)
    assert len(split.test) == 6 and split.labels.tolist().count(1) == 4
    assert split.defects == sorted(DEFECT_KINDS)
    assert [s.image.parent.name for s in split.good_test] == ["good", "good"]
    for s in split.test:
        assert s.defect == s.image.parent.name and s.label == int(s.defect != "good")
        if s.label:
            assert s.mask == MaskRef(mvtec_root / "carpet" / "ground_truth" / s.defect / f"{s.image.stem}_mask.png")
        else:
            assert s.mask is None
    assert split.has_masks and split.test_images == [s.image for s in split.test]


def test_mvtec_masks_binary_and_matching(mvtec_root: Path) -> None:
    split = mvtec_category(mvtec_root, "grid")
    for s in split.test:
        shape = image_shape(s.image)
        assert shape == tuple(read_image(s.image).shape[1:]) == (64, 64)
        mask = s.load_mask(shape)
        assert mask.dtype == bool and mask.shape == shape
        if s.label:
            assert 0 < mask.sum() < mask.size
            assert np.array_equal(mask, np.asarray(Image.open(s.mask.path)) > 0)
        else:
            assert not mask.any()


def test_mvtec_defaults_to_official_categories(mvtec_root: Path) -> None:
    assert [s.name for s in mvtec(mvtec_root)] == ["carpet", "grid"]  # widget is custom: not loaded by default
    custom = mvtec(mvtec_root, ["widget", "grid"])
    assert [s.name for s in custom] == ["widget", "grid"]
    assert [s.name for s in mvtec(str(mvtec_root), "carpet")] == ["carpet"]
    assert custom[0].labels.tolist() == mvtec_category(mvtec_root, "carpet").labels.tolist()


def test_mvtec_root_errors(mvtec_root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert str(missing) in error(mvtec, missing) and str(missing) in error(mvtec_category, missing, "carpet")
    (tmp_path / "other" / "stuff").mkdir(parents=True)
    message = error(mvtec, tmp_path / "other")
    assert str(tmp_path / "other") in message and str(tmp_path / "other" / "carpet") in message and "stuff" in message
    message = error(mvtec, mvtec_root / "carpet")
    assert "one category folder" in message and str(mvtec_root) in message
    message = error(mvtec_category, mvtec_root, "bottle")
    assert str(mvtec_root / "bottle") in message and "carpet, grid, widget" in message
    assert "bottle" in error(mvtec, mvtec_root, ["carpet", "bottle"])


def test_mvtec_missing_mask(mvtec_copy: Path) -> None:
    mask = next((mvtec_copy / "carpet" / "ground_truth" / "hole").glob("*_mask.png"))
    mask.unlink()
    message = error(mvtec_category, mvtec_copy, "carpet")
    assert str(mask) in message and "missing ground-truth mask" in message


def test_mvtec_empty_or_missing_train(mvtec_copy: Path) -> None:
    good = mvtec_copy / "carpet" / "train" / "good"
    for p in good.iterdir():
        p.unlink()
    assert str(good) in error(mvtec_category, mvtec_copy, "carpet")
    good.rmdir()
    assert str(good) in error(mvtec_category, mvtec_copy, "carpet")
    shutil.rmtree(mvtec_copy / "grid" / "test")
    assert str(mvtec_copy / "grid" / "test") in error(mvtec_category, mvtec_copy, "grid")


def test_load_mask_errors(mvtec_copy: Path) -> None:
    split = mvtec_category(mvtec_copy, "carpet")
    first, second, third = split.defective_test[:3]
    first.mask.path.unlink()
    message = error(first.load_mask, (64, 64))
    assert str(first.mask.path) in message and "missing" in message
    second.mask.path.write_bytes(b"not a png")
    assert str(second.mask.path) in error(second.load_mask, (64, 64))
    Image.fromarray(np.full((32, 64), 255, np.uint8)).save(third.mask.path)
    message = error(third.load_mask, (64, 64))
    assert str(third.mask.path) in message and "32x64" in message and "64x64" in message
    no_mask = Sample(third.image, 1, "hole", None)
    assert str(third.image) in error(no_mask.load_mask, (64, 64))


def test_transform_masks_matches_preprocess(mvtec_root: Path, stc_data: tuple[Path, dict]) -> None:
    split = mvtec_category(mvtec_root, "carpet")
    preprocess = Preprocess(image_size=(80, 80), crop_size=(56, 56))
    masks = transform_masks(split.test, preprocess)
    assert masks.shape == (6, 56, 56) and masks.dtype == bool
    for s, m in zip(split.test, masks):
        assert np.array_equal(m, preprocess.mask(s.load_mask((64, 64))))
        assert m.any() == bool(s.label)
    stc_split = stc(stc_data[0])
    preprocess = Preprocess(image_size=(64, 64), crop_size=None)
    masks = transform_masks(stc_split.test, preprocess)
    assert masks.shape == (7, 64, 64)
    for s, m in zip(stc_split.test, masks):
        assert np.array_equal(m, preprocess.mask(s.load_mask(FRAME)))
    assert transform_masks([], preprocess).shape == (0, 64, 64)


# ----------------------------------------------------------------------------------------------- STC


def test_stc_layout_labels_and_strides(stc_data: tuple[Path, dict]) -> None:
    root, _ = stc_data
    split = stc(root)
    assert split.name == "stc" and len(split.train) == 17
    unpadded = [p.name for p in split.train if p.parent.name == "01_002"]
    assert unpadded == [f"{i}.jpg" for i in range(12)]  # natural order, not 0, 1, 10, 11, 2
    assert split.labels.tolist() == [0, 0, 1, 1, 0, 1, 0]
    assert [s.mask.index for s in split.test] == [0, 1, 2, 3, 0, 1, 2]
    assert {s.defect for s in split.test} == {"good", "abnormal"}
    strided = stc(root, train_stride=2, test_stride=2)
    assert len(strided.train) == 3 + 6
    assert [p.name for p in strided.train if p.parent.name == "01_002"] == [f"{i}.jpg" for i in range(0, 12, 2)]
    assert [(s.image.parent.name, s.mask.index) for s in strided.test] == [
        ("01_0014", 0), ("01_0014", 2), ("01_0015", 0), ("01_0015", 2)]
    assert strided.labels.tolist() == [0, 1, 0, 0]
    assert all(s.image.name == f"{s.mask.index:03d}.jpg" for s in strided.test)


def test_stc_masks_mark_the_painted_defect(stc_data: tuple[Path, dict]) -> None:
    root, truth = stc_data
    for s in stc(root).test:
        clean, masks = truth[s.image.parent.name]
        mask = s.load_mask(image_shape(s.image))
        assert mask.dtype == bool and np.array_equal(mask, masks[s.mask.index])
        if s.label:
            change = np.abs(read_image(s.image).numpy() * 255 - clean[s.mask.index].transpose(2, 0, 1)).mean(0)
            assert change[mask].mean() > 5 * change[~mask].mean()
        else:
            assert not mask.any()


def test_stc_errors(stc_copy: Path, tmp_path: Path) -> None:
    assert str(tmp_path / "nope") in error(stc, tmp_path / "nope")
    for stride in (0, -1, 1.5):
        assert "stride" in error(stc, stc_copy, train_stride=stride)
    assert "test_stride" in error(stc, stc_copy, test_stride=0)
    pixel = stc_copy / "testing" / "test_pixel_mask" / "01_0015.npy"
    np.save(pixel, np.zeros((2, *FRAME), np.uint8))
    message = error(stc, stc_copy)
    assert str(pixel) in message and "01_0015" in message and "3 frames" in message and "has 2" in message
    pixel.unlink()
    message = error(stc, stc_copy)
    assert str(pixel) in message and "01_0015" in message
    labels = stc_copy / "testing" / "test_frame_mask" / "01_0014.npy"
    np.save(labels, np.zeros(5, np.uint8))
    assert str(labels) in error(stc, stc_copy)


def test_stc_missing_folders(stc_copy: Path) -> None:
    np.save(stc_copy / "testing" / "test_pixel_mask" / "02_0001.npy", np.zeros((1, *FRAME), np.uint8))
    message = error(stc, stc_copy)
    assert "02_0001" in message and str(stc_copy / "testing" / "frames" / "02_0001") in message
    (stc_copy / "testing" / "test_pixel_mask" / "02_0001.npy").unlink()
    shutil.rmtree(stc_copy / "testing" / "test_frame_mask")
    assert str(stc_copy / "testing" / "test_frame_mask") in error(stc, stc_copy)
    frames = stc_copy / "training" / "frames"
    shutil.rmtree(frames)
    assert str(frames) in error(stc, stc_copy)
    (stc_copy / "training" / "videos").mkdir()
    (stc_copy / "training" / "videos" / "01_001.avi").write_bytes(b"")
    message = error(stc, stc_copy)
    assert str(frames) in message and "extract" in message


def test_stc_bad_mask_frame(stc_data: tuple[Path, dict]) -> None:
    sample = stc(stc_data[0]).test[0]
    bad = Sample(sample.image, 1, "abnormal", MaskRef(sample.mask.path, 99))
    assert str(sample.mask.path) in error(bad.load_mask, FRAME)
    assert str(sample.mask.path) in error(sample.load_mask, (FRAME[0] + 1, FRAME[1]))


# ----------------------------------------------------------------------------------------------- folders


def test_folder_split_grouped(mvtec_root: Path) -> None:
    carpet = mvtec_root / "carpet"
    reference = mvtec_category(mvtec_root, "carpet")
    split = folder_split(carpet / "train" / "good", carpet / "test", mask_dir=carpet / "ground_truth", name="mine")
    assert split.name == "mine" and split.train == reference.train and split.test == reference.test
    unmasked = folder_split(carpet / "train" / "good", carpet / "test")
    assert unmasked.labels.tolist() == reference.labels.tolist() and not unmasked.has_masks
    assert all(s.mask is None for s in unmasked.test)
    assert str(unmasked.defective_test[0].image) in error(unmasked.defective_test[0].load_mask, (64, 64))


def test_folder_split_flat(mvtec_root: Path, tmp_path: Path) -> None:
    carpet = mvtec_root / "carpet"
    flat, masks = tmp_path / "flat", tmp_path / "masks"
    flat.mkdir(), masks.mkdir()
    expected = {}
    for k, s in enumerate(mvtec_category(mvtec_root, "carpet").test):
        name = f"{s.defect}_{s.image.name}"
        shutil.copy(s.image, flat / name)
        if s.label:  # alternate the two naming conventions: <stem>_mask.png and the image's own name
            target = masks / (name if k % 2 else name.replace(".png", "_mask.png"))
            shutil.copy(s.mask.path, target)
        elif k == 1:  # an all-zero mask means good
            Image.fromarray(np.zeros((64, 64), np.uint8)).save(masks / name)
        expected[name] = s.label
    split = folder_split(carpet / "train" / "good", flat, mask_dir=masks)
    assert {s.image.name: s.label for s in split.test} == expected
    for s in split.test:
        assert (s.mask is not None) == bool(s.label) and s.defect == ("defect" if s.label else "good")
        assert s.load_mask((64, 64)).any() == bool(s.label)
    message = error(folder_split, carpet / "train" / "good", flat)
    assert str(flat) in message and "mask_dir" in message


def test_folder_split_errors(mvtec_copy: Path, tmp_path: Path) -> None:
    carpet = mvtec_copy / "carpet"
    mask = next((carpet / "ground_truth" / "stain").glob("*_mask.png"))
    mask.unlink()
    assert str(mask) in error(folder_split, carpet / "train" / "good", carpet / "test", mask_dir=carpet / "ground_truth")
    shutil.copy(carpet / "train" / "good" / "000.png", carpet / "test" / "loose.png")
    assert str(carpet / "test") in error(folder_split, carpet / "train" / "good", carpet / "test")
    assert str(tmp_path / "none") in error(folder_split, carpet / "train" / "good", tmp_path / "none")
    assert str(tmp_path / "none") in error(folder_split, tmp_path / "none", carpet / "test")
    (tmp_path / "empty").mkdir()
    assert str(tmp_path / "empty") in error(folder_split, carpet / "train" / "good", tmp_path / "empty")
