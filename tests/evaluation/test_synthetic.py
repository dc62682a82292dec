"""The synthetic inspection dataset: layout, masks, train/test separation, determinism, defect visibility."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from padim.evaluation.synthetic import (
    DEFECT_KINDS,
    TEXTURES,
    _crop_origin,
    _good_part,
    _test_band_start,
    load_split,
    load_texture,
    make_inspection_set,
    paint_defect,
)

SMALL = dict(n_train=4, n_test_good=3, n_test_defect=8, size=96)


def read(path: Path) -> np.ndarray:
    """Pixels of a PNG file."""
    return np.asarray(Image.open(path))


def pixels(category: Path) -> dict[str, np.ndarray]:
    """Every PNG of a category, keyed by its path relative to the category."""
    return {str(p.relative_to(category)): read(p) for p in sorted(category.rglob("*.png"))}


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_inspection_set(tmp_path_factory.mktemp("data"))


def test_default_layout_and_counts(default_set: Path) -> None:
    assert default_set.name == "brick"
    assert len(list((default_set / "train" / "good").glob("*.png"))) == 40
    assert len(list((default_set / "test" / "good").glob("*.png"))) == 10
    assert sorted(p.name for p in (default_set / "test").iterdir()) == sorted(("good",) + DEFECT_KINDS)
    for kind in DEFECT_KINDS:
        images = sorted(p.stem for p in (default_set / "test" / kind).glob("*.png"))
        masks = sorted(p.stem for p in (default_set / "ground_truth" / kind).glob("*.png"))
        assert images == [f"{i:03d}" for i in range(5)]
        assert masks == [f"{stem}_mask" for stem in images]
    assert not (default_set / "ground_truth" / "good").exists()
    assert [p.name for p in default_set.parent.iterdir()] == ["brick"]  # no staging folder left behind


def test_load_split_pairs_images_with_masks(default_set: Path) -> None:
    train, test, masks = load_split(default_set)
    assert len(train) == 40 and len(test) == 30 and len(masks) == 30
    assert train == sorted(train)
    assert load_split(str(default_set)) == (train, test, masks)
    for image, mask in zip(test, masks):
        if image.parent.name == "good":
            assert mask is None
        else:
            assert mask == default_set / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"
    assert sum(mask is None for mask in masks) == 10


def test_images_and_masks_have_matching_shapes_and_binary_masks(default_set: Path) -> None:
    for path in load_split(default_set)[0][:3]:
        image = read(path)
        assert image.shape == (192, 192, 3) and image.dtype == np.uint8
    for image_path, mask_path in zip(*load_split(default_set)[1:]):
        image = read(image_path)
        assert image.shape == (192, 192, 3) and image.dtype == np.uint8
        if mask_path is None:
            continue
        mask = read(mask_path)
        assert mask.shape == (192, 192) and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}
        assert (mask > 0).sum() >= 50


def test_load_split_rejects_missing_mask(tmp_path: Path) -> None:
    category = make_inspection_set(tmp_path, "grass", **SMALL)
    (category / "ground_truth" / "hole" / "000_mask.png").unlink()
    with pytest.raises(ValueError, match="000_mask.png"):
        load_split(category)


def test_crop_origins_stay_in_their_band() -> None:
    rng = np.random.default_rng(0)
    boundary = _test_band_start(512)
    for _ in range(500):
        top, left = _crop_origin(512, 512, 192, "train", rng)
        assert 0 <= top and top + 192 <= boundary and 0 <= left <= 512 - 192
        top, left = _crop_origin(512, 512, 192, "test", rng)
        assert boundary <= top <= 512 - 192 and 0 <= left <= 512 - 192


def test_test_crops_come_from_pixels_train_never_sees(default_set: Path) -> None:
    from skimage.feature import match_template

    photo = load_texture("brick").astype(np.float32)
    top, bottom = photo[: _test_band_start(512)], photo[_test_band_start(512) :]
    train, test, masks = load_split(default_set)
    good_test = [path for path, mask in zip(test, masks) if mask is None]
    train_images = [read(p) for p in train]
    for path in good_test[:3]:
        gray = read(path)[..., 0].astype(np.float32)
        # brightness jitter does not change normalised correlation; try both mirror states
        in_test = max(match_template(bottom, g).max() for g in (gray, gray[:, ::-1]))
        in_train = max(match_template(top, g).max() for g in (gray, gray[:, ::-1]))
        assert in_test > 0.99 and in_train < 0.9
    for path in good_test:
        assert not any(np.array_equal(read(path), image) for image in train_images)


def test_same_seed_same_files_other_seed_different(tmp_path: Path) -> None:
    first = pixels(make_inspection_set(tmp_path / "a", "gravel", seed=3, **SMALL))
    second = pixels(make_inspection_set(tmp_path / "b", "gravel", seed=3, **SMALL))
    other = pixels(make_inspection_set(tmp_path / "c", "gravel", seed=4, **SMALL))
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[name], second[name]) for name in first)
    assert not np.array_equal(first["train/good/000.png"], other["train/good/000.png"])
    assert not np.array_equal(first["test/scratch/000.png"], other["test/scratch/000.png"])


def test_rebuilding_replaces_the_previous_set(tmp_path: Path) -> None:
    make_inspection_set(tmp_path, "grass", n_train=9, n_test_good=5, n_test_defect=8, size=64)
    category = make_inspection_set(tmp_path, "grass", n_train=2, n_test_good=1, n_test_defect=4, size=64)
    train, test, masks = load_split(category)
    assert len(train) == 2 and len(test) == 5 and sum(m is not None for m in masks) == 4


@pytest.mark.parametrize("size", [16, 300])
def test_rejects_sizes_that_do_not_fit(tmp_path: Path, size: int) -> None:
    with pytest.raises(ValueError, match="size"):
        make_inspection_set(tmp_path, size=size)


def test_rejects_unknown_texture(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="texture"):
        make_inspection_set(tmp_path, texture="marble")


def good_and_donor(texture: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """A defect-free test crop, a donor crop of another texture, and the generator that made them."""
    rng = np.random.default_rng(seed)
    donor_texture = next(t for t in TEXTURES if t != texture)
    return _good_part(load_texture(texture), 192, "test", rng), _good_part(load_texture(donor_texture), 192, "train", rng), rng


@pytest.mark.parametrize("texture", TEXTURES)
@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defect_changes_pixels_inside_its_mask(kind: str, texture: str) -> None:
    for seed in range(3):
        good, donor, rng = good_and_donor(texture, seed)
        before = good.copy()
        defective, mask = paint_defect(good, kind, rng, donor)
        assert np.array_equal(good, before)  # input left untouched
        assert defective.shape == good.shape and defective.dtype == np.uint8
        assert mask.shape == good.shape[:2] and mask.dtype == bool
        diff = np.abs(defective.astype(int) - good).max(axis=2)
        inside, outside = diff[mask].mean(), diff[~mask].mean()
        assert mask.sum() >= 50
        assert inside > 10 * outside and inside > 30
        assert (diff[mask] >= 10).mean() > 0.8  # the mask marks visibly changed pixels
        low = 0.002 if kind == "scratch" else 0.015
        assert low <= mask.mean() <= 0.09


def test_paint_defect_is_deterministic_given_rng() -> None:
    good, donor, _ = good_and_donor("brick", 0)
    for kind in DEFECT_KINDS:
        a = paint_defect(good, kind, np.random.default_rng(7), donor)
        b = paint_defect(good, kind, np.random.default_rng(7), donor)
        c = paint_defect(good, kind, np.random.default_rng(8), donor)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert not np.array_equal(a[1], c[1])


def test_paint_defect_accepts_grayscale() -> None:
    good, _, rng = good_and_donor("grass", 0)
    defective, mask = paint_defect(good[..., 0], "hole", rng)
    assert defective.shape == good.shape and mask.any()


def test_paint_defect_rejects_bad_input() -> None:
    good, _, rng = good_and_donor("brick", 0)
    with pytest.raises(ValueError, match="donor"):
        paint_defect(good, "foreign", rng)
    with pytest.raises(ValueError, match="donor"):
        paint_defect(good, "foreign", rng, donor=good[:50, :50])
    with pytest.raises(ValueError, match="crack"):
        paint_defect(good, "crack", rng)
