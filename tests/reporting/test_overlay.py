"""Heat-map overlays, contours, atomic PNG writes and panel layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from padim.errors import PadimError
from PIL import Image

from padim.reporting.overlay import contour, heatmap_overlay, save_png, side_by_side

GREEN = (0, 255, 0)
RED = (255, 0, 0)


def gray_image(h: int = 40, w: int = 50) -> np.ndarray:
    return np.full((h, w, 3), 128, dtype=np.uint8)


def square(h: int = 40, w: int = 50, top: int = 10, left: int = 15, side: int = 12) -> np.ndarray:
    region = np.zeros((h, w), dtype=bool)
    region[top : top + side, left : left + side] = True
    return region


def is_colour(pixel: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return tuple(int(v) for v in pixel) == colour


def test_shape_and_dtype_for_rgb_and_grayscale() -> None:
    scores = np.random.default_rng(0).random((40, 50))
    for image in (gray_image(), gray_image()[..., 0]):
        out = heatmap_overlay(image, scores)
        assert out.shape == (40, 50, 3) and out.dtype == np.uint8


def test_jet_extremes_are_red_for_max_and_blue_for_min() -> None:
    scores = np.tile(np.linspace(0.0, 3.0, 50), (40, 1))
    out = heatmap_overlay(gray_image(), scores, alpha=1.0).astype(int)
    low, high = out[20, 0], out[20, -1]
    assert high[0] >= 120 and high[1] < 30 and high[2] < 30
    assert low[2] >= 120 and low[0] < 30 and low[1] < 30


def test_vmin_vmax_fix_the_scale() -> None:
    scores = np.full((40, 50), 0.5)
    as_high = heatmap_overlay(gray_image(), scores, vmin=0.0, vmax=0.5, alpha=1.0)
    as_low = heatmap_overlay(gray_image(), scores, vmin=0.5, vmax=2.0, alpha=1.0)
    assert as_high[0, 0, 0] > 100 and as_high[0, 0, 2] < 30
    assert as_low[0, 0, 2] > 100 and as_low[0, 0, 0] < 30
    with pytest.raises(ValueError, match="vmin"):
        heatmap_overlay(gray_image(), scores, vmin=2.0, vmax=1.0)


def test_alpha_zero_keeps_the_image_and_alpha_blends() -> None:
    image = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    scores = np.random.default_rng(2).random((40, 50))
    assert np.array_equal(heatmap_overlay(image, scores, alpha=0.0), image)
    full = heatmap_overlay(image, scores, alpha=1.0).astype(float)
    half = heatmap_overlay(image, scores, alpha=0.5).astype(float)
    assert np.abs(half - (image + full) / 2).max() <= 1.0


def test_mask_contour_is_green_and_threshold_contour_is_red() -> None:
    truth = square(top=5, left=5)
    hot = square(top=22, left=30)
    scores = hot.astype(float)
    out = heatmap_overlay(gray_image(), scores, mask=truth, threshold=0.5)
    green = np.all(out == GREEN, axis=2)
    red = np.all(out == RED, axis=2)
    assert np.array_equal(green, contour(truth)) and np.array_equal(red, contour(hot))
    assert is_colour(out[5, 10], GREEN) and is_colour(out[4, 10], GREEN)  # 2 px line across the edge
    assert not green[11, 11] and not red[28, 36]  # region interiors stay unpainted
    assert is_colour(out[22, 35], RED) and is_colour(out[21, 35], RED)
    assert red.sum() > 0 and green.sum() > 0


def test_mask_accepts_uint8_0_255() -> None:
    truth = square()
    a = heatmap_overlay(gray_image(), np.zeros((40, 50)), mask=truth)
    b = heatmap_overlay(gray_image(), np.zeros((40, 50)), mask=truth.astype(np.uint8) * 255)
    assert np.array_equal(a, b)


def test_contour_is_thin_and_skips_image_border() -> None:
    line = contour(square())
    assert line.sum() == (4 * 12 - 4) + 4 * 12  # inner ring plus 4-connected outer ring (no corners)
    assert not contour(np.ones((10, 10), dtype=bool)).any()


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(30, 50\).*\(40, 50\)"):
        heatmap_overlay(gray_image(), np.zeros((30, 50)))
    with pytest.raises(ValueError, match="mask"):
        heatmap_overlay(gray_image(), np.zeros((40, 50)), mask=np.zeros((40, 49), dtype=bool))


def test_constant_and_nan_maps_do_not_break() -> None:
    with np.errstate(all="raise"):
        out = heatmap_overlay(gray_image(), np.full((40, 50), 7.0), alpha=1.0)
    assert np.all(out == out[0, 0])
    scores = np.random.default_rng(0).random((40, 50))
    scores[3, 4] = np.nan
    out = heatmap_overlay(gray_image(), scores, threshold=0.5)
    assert out.dtype == np.uint8 and out.shape == (40, 50, 3)


def test_save_png_round_trips_and_leaves_no_temp_files(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    target = tmp_path / "out" / "overlay.png"
    save_png(target, np.zeros_like(image))
    save_png(str(target), image)  # overwrite in place
    assert np.array_equal(np.asarray(Image.open(target)), image)
    assert [p.name for p in target.parent.iterdir()] == ["overlay.png"]


def test_save_png_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "overlay.png"
    save_png(target, gray_image())
    with pytest.raises(ValueError):
        save_png(target, np.zeros((4, 4, 3), dtype=np.float32))
    assert np.array_equal(np.asarray(Image.open(target)), gray_image())
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.png"]


def test_save_png_interrupted_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "overlay.png"
    save_png(target, gray_image())

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("padim.utils.atomic.os.replace", fail)
    with pytest.raises(PadimError, match="disk full"):
        save_png(target, np.zeros((40, 50, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(Image.open(target)), gray_image())
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.png"]


def test_side_by_side_places_panels_with_white_gap() -> None:
    left = np.zeros((40, 50, 3), dtype=np.uint8)
    right = np.full((30, 20), 60, dtype=np.uint8)
    out = side_by_side(left, right, gap=4)
    assert out.shape == (40, 74, 3) and out.dtype == np.uint8
    assert np.all(out[:, :50] == 0)
    assert np.all(out[:, 50:54] == 255)
    assert np.all(out[:30, 54:] == 60) and np.all(out[30:, 54:] == 255)
    assert np.array_equal(side_by_side(left), left)
    with pytest.raises(ValueError):
        side_by_side()


# ----------------------------------------------------------------------------------------------- the colour scale
def test_colour_scale_range_spans_every_map_and_skips_not_inspected_pixels() -> None:
    from padim.reporting.overlay import colour_scale

    a = np.array([[1.0, np.nan], [3.0, 2.0]])
    b = np.array([[0.5, 9.0]])
    assert colour_scale([a, b], basis="range") == (0.5, 9.0)
    assert colour_scale(np.stack([a, a]), basis="range") == (1.0, 3.0)  # a batch of maps as one array
    # map by map, merged by min/max, is the same scale (how the results folder gathers it)
    ranges = [colour_scale([m]) for m in (a, b)]
    assert (min(r[0] for r in ranges), max(r[1] for r in ranges)) == colour_scale([a, b])
    assert colour_scale([np.full((2, 2), np.nan)]) == colour_scale([]) == (0.0, 1.0)


def test_colour_scale_from_the_calibration_puts_the_threshold_mid_scale() -> None:
    from types import SimpleNamespace

    from padim.reporting.overlay import colour_scale

    calibration = SimpleNamespace(pixel_threshold=5.0, pixel_sample=np.array([2.0, 3.0, 7.0]))
    assert colour_scale(basis="calibration", calibration=calibration) == (2.0, 8.0)
    flat = SimpleNamespace(pixel_threshold=2.0, pixel_sample=np.array([2.0, 2.0]))
    assert colour_scale(basis="calibration", calibration=flat) == (2.0, None)  # open-ended: the overlay's own top
    assert colour_scale(basis="calibration", calibration=None) == (None, None)


def test_colour_scale_refuses_an_unknown_basis() -> None:
    from padim.errors import InputError
    from padim.reporting.overlay import colour_scale

    with pytest.raises(InputError, match="basis"):
        colour_scale([np.zeros((2, 2))], basis="mean")  # type: ignore[arg-type]
