"""Coverage: what the crop never sees is marked not inspected everywhere; the full-frame preset sees everything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

from padim import PaDiM
from padim.cli import main
from padim.data import Preprocess, full_frame_size
from padim.reporting.overlay import NOT_INSPECTED_COLOUR, heatmap_overlay, hatch
from padim.evaluation.synthetic import _border_band, load_split, make_inspection_set


def test_original_size_maps_are_nan_exactly_where_the_crop_never_looked() -> None:
    pre = Preprocess((256, 256), (224, 224))
    maps = torch.rand(1, 224, 224)
    out = pre.to_original(maps, (512, 384))[0].numpy()
    rows, cols = np.nonzero(np.isfinite(out))
    # the crop covers rows 16..240 of 256 -> 32..480 of 512, cols 16..240 -> 24..360 of 384
    assert 32 <= rows.min() <= 36 and 476 <= rows.max() <= 480
    assert 24 <= cols.min() <= 28 and 356 <= cols.max() <= 360
    assert np.isnan(out[:32]).all() and np.isnan(out[:, :24]).all() and np.isnan(out[481:]).all()
    assert np.isfinite(out[40:470, 30:350]).all()
    assert pre.inspected_fraction() == (224 / 256, 224 / 256)


def test_without_a_crop_every_pixel_is_inspected() -> None:
    pre = Preprocess((224, 288), None)
    assert np.isfinite(pre.to_original(torch.rand(2, 224, 288), (300, 400)).numpy()).all()
    assert pre.inspected_fraction() == (1.0, 1.0)


def test_overlays_hatch_not_inspected_pixels_and_never_colour_them() -> None:
    image = np.full((40, 40, 3), 200, np.uint8)
    amap = np.random.default_rng(0).random((40, 40))
    amap[:, :10] = np.nan
    out = heatmap_overlay(image, amap, vmin=0.0, vmax=1.0)
    lines = hatch((40, 40))[:, :10]
    assert (out[:, :10][lines] == NOT_INSPECTED_COLOUR).all()
    assert (out[:, :10][~lines] == 100).all()  # the image, dimmed: no heat colour where nothing was seen
    assert not (out[:, 10:] == NOT_INSPECTED_COLOUR).all(axis=-1).any()


@pytest.mark.parametrize("frame", [(3000, 4000), (1080, 1920), (500, 500), (100, 700)])
def test_full_frame_size_keeps_the_aspect_ratio_at_the_paper_crops_cost(frame: tuple[int, int]) -> None:
    h, w = full_frame_size(*frame)
    assert h % 32 == 0 and w % 32 == 0
    assert abs((w / h) / (frame[1] / frame[0]) - 1) < 0.2
    assert abs(h * w / 224**2 - 1) < 0.2


def test_border_defects_lie_in_the_band_the_paper_crop_drops(tmp_path: Path) -> None:
    category = make_inspection_set(tmp_path, "gravel", n_train=1, n_test_good=0, n_test_defect=8, size=128,
                                   defects_at="border")
    _, _, masks = load_split(category)
    band = _border_band(128)
    outer = np.ones((128, 128), bool)
    outer[band:-band, band:-band] = False
    shares = []
    for path in masks:
        mask = np.asarray(Image.open(path)) > 0
        assert mask.any()
        shares.append((mask & outer).sum() / mask.sum())
    assert min(shares) >= 0.2 and np.mean(shares) >= 0.4, shares  # centred in the band: much of it unseen


def test_preset_full_frame_inspects_whole_non_square_frames(tmp_path: Path, capsys) -> None:
    good = tmp_path / "good"
    good.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)).save(good / f"{i}.png")
    model_path = tmp_path / "m.safetensors"
    tiny = ["--backbone", "resnet18", "--weights", "random", "--n-features", "16", "--quiet"]
    assert main(["fit", str(good), "-o", str(model_path), "--preset", "full-frame", *tiny]) == 0
    model = PaDiM.load(model_path)
    assert model.preprocessing.crop_size is None
    h, w = model.preprocessing.image_size
    assert (h, w) == full_frame_size(96, 160) and w > h
    capsys.readouterr()
    assert main(["info", str(model_path)]) == 0
    assert "inspected       the whole image (no crop)" in capsys.readouterr().out
    pred = model.predict(good, original_size=True)
    assert all(np.isfinite(m).all() and m.shape == (96, 160) for m in pred.maps)


def test_paper_preset_reports_and_marks_what_it_does_not_inspect(tmp_path: Path, capsys) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(4, 80, 80, 3), dtype=np.uint8)
    model = PaDiM(**{**TINY, "image_size": 72, "crop_size": 64}).fit(images)
    model.save(tmp_path / "m.safetensors")
    assert main(["info", str(tmp_path / "m.safetensors")]) == 0
    assert "centre 88.9% x 88.9% of every image (79.0% of its area); the rest is NOT inspected" in capsys.readouterr().out
    pred = model.predict(images, original_size=True, pixel_threshold=0.0)
    unseen = ~np.isfinite(pred.maps[0])
    assert unseen[0].all() and unseen[:, 0].all() and not unseen[40, 40]
    assert not pred.masks[0][unseen].any()  # a mask never claims what was not looked at


def test_predict_overlays_hatch_the_border_the_crop_dropped(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    good = tmp_path / "good"
    good.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(good / f"{i}.png")
    model = PaDiM(**{**TINY, "image_size": 72, "crop_size": 64}).fit(good)
    model.save(tmp_path / "m.safetensors")
    assert main(["predict", str(tmp_path / "m.safetensors"), str(good), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    overlay = np.asarray(Image.open(next((tmp_path / "out" / "overlays").iterdir())))
    heat = overlay[:, -80:]  # the panel right of the image
    grey = (heat == NOT_INSPECTED_COLOUR).all(axis=-1)
    assert grey[:3].any() and grey[:, :3].any() and not grey[30:50, 30:50].any()
