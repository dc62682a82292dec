"""The paper's non-aligned protocol (Section V-C): an image and its mask rotated and cropped alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import error
from padim.evaluation.transforms import nonaligned


def _square_scene(height: int = 256, width: int = 256) -> tuple[torch.Tensor, np.ndarray]:
    """A dark image with a bright central square, and the square's mask."""
    image = torch.full((3, height, width), 0.1)
    mask = np.zeros((height, width), dtype=bool)
    r0, r1, c0, c1 = height * 3 // 8, height * 5 // 8, width * 3 // 8, width * 5 // 8
    image[:, r0:r1, c0:c1] = 0.9
    mask[r0:r1, c0:c1] = True
    return image, mask


def test_nonaligned_is_seeded() -> None:
    image, mask = _square_scene(200, 300)
    a = nonaligned(image, mask, np.random.default_rng(7))
    b = nonaligned(image, mask, np.random.default_rng(7))
    c = nonaligned(image, mask, np.random.default_rng(8))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (3, 224, 224) and a[0].dtype == torch.float32
    assert a[1].shape == (224, 224) and a[1].dtype == bool
    assert 0.0 <= float(a[0].min()) and float(a[0].max()) <= 1.0
    image_only, none = nonaligned(image, None, np.random.default_rng(7))
    assert none is None and torch.equal(image_only, a[0])


@pytest.mark.parametrize("seed", range(6))
def test_nonaligned_mask_follows_image(seed: int) -> None:
    image, mask = _square_scene(256, 256) if seed % 2 else _square_scene(300, 240)
    out, out_mask = nonaligned(image, mask, np.random.default_rng(seed))
    bright = out.mean(0).numpy() > 0.5
    iou = (bright & out_mask).sum() / (bright | out_mask).sum()
    assert iou > 0.95
    angle = np.random.default_rng(seed).uniform(-10, 10)  # the first draw is the angle
    rows, cols = np.nonzero(out_mask)
    fill = out_mask.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))
    if abs(angle) > 3:
        assert fill < 0.95  # rotated: the square no longer fills its bounding box


def test_nonaligned_without_rotation_is_a_random_crop() -> None:
    image, mask = torch.rand(3, 256, 256), np.random.default_rng(0).random((256, 256)) > 0.5
    out, out_mask = nonaligned(image, mask, np.random.default_rng(3), max_degrees=0.0)
    draws = np.random.default_rng(3)
    draws.uniform(0, 0)
    top, left = int(draws.integers(0, 33)), int(draws.integers(0, 33))
    assert torch.allclose(out, image[:, top : top + 224, left : left + 224], atol=1e-5)
    assert np.array_equal(out_mask, mask[top : top + 224, left : left + 224])


def test_nonaligned_errors() -> None:
    image, mask = _square_scene(64, 64)
    rng = np.random.default_rng(0)
    assert "(3, H, W)" in error(nonaligned, image[0], None, rng)
    assert "mask" in error(nonaligned, image, mask[:10], rng)
    assert "crop" in error(nonaligned, image, mask, rng, resize=100, crop=128)
    assert "max_degrees" in error(nonaligned, image, mask, rng, max_degrees=-1)
