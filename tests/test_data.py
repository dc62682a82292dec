"""The paper's preprocessing, masks transformed like images, and batching: padim.data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from padim import paper
from camera_files import write_png
from padim.data import Item, Preprocess, as_items, iter_batches
from padim.errors import PadimError

MEAN = torch.tensor(paper.IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(paper.IMAGENET_STD).view(3, 1, 1)


# ---------------------------------------------------------------------------------------- preprocessing
def test_default_preprocess_is_224_with_imagenet_normalisation() -> None:
    pre = Preprocess()
    grey = np.full((300, 400, 3), 128, np.uint8)
    out = pre(Item("grey", grey).load())
    assert out.shape == (3, 224, 224)
    expected = (torch.full((3, 1, 1), 128 / 255) - MEAN) / STD
    assert torch.allclose(out, expected.expand(3, 224, 224), atol=1e-5)
    assert not torch.allclose(out[0], out[2])  # per-channel mean/std, not one number


def test_non_square_size_without_crop() -> None:
    pre = Preprocess(image_size=(96, 160), crop_size=None)
    assert pre.output_size == (96, 160)
    assert pre(torch.rand(3, 50, 70)).shape == (3, 96, 160)
    assert pre.crop_box() == (0, 0, 96, 160)


def test_crop_box_is_centred() -> None:
    assert Preprocess().crop_box() == (16, 16, 224, 224)
    top, left, h, w = Preprocess(image_size=(100, 120), crop_size=(60, 40)).crop_box()
    assert (top, left, h, w) == (20, 40, 60, 40)


def test_crop_cuts_the_centre_of_the_resized_image() -> None:
    img = torch.zeros(3, 10, 10)
    img[:, 3:7, 3:7] = 1.0
    out = Preprocess(image_size=(10, 10), crop_size=(4, 4)).resized(img)
    assert torch.equal(out, torch.ones(3, 4, 4))


@pytest.mark.parametrize("crop", [(80, 64), (64, 65)])
def test_crop_larger_than_image_is_an_error(crop) -> None:
    with pytest.raises(PadimError, match="larger"):
        Preprocess(image_size=(64, 64), crop_size=crop)


def square_image_and_mask(h: int, w: int, top: int, left: int, side: int) -> tuple[torch.Tensor, np.ndarray]:
    """A black image with a white square, and the mask of that square."""
    mask = np.zeros((h, w), np.uint8)
    mask[top : top + side, left : left + side] = 255
    return torch.from_numpy(mask / 255.0).float().expand(3, h, w), mask


def bbox(region: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(region)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def test_mask_lands_at_the_expected_place_after_resize_and_crop() -> None:
    _, mask = square_image_and_mask(100, 100, top=50, left=20, side=24)
    out = Preprocess(image_size=(50, 50), crop_size=(40, 40)).mask(mask)  # halve, then cut 5 px each side
    expected = np.zeros((40, 40), bool)
    expected[20:32, 5:17] = True
    assert np.array_equal(out, expected)


@pytest.mark.parametrize(
    "image_size, crop, original",
    [((50, 50), (40, 40), (100, 100)), ((60, 90), (48, 60), (20, 30)), ((96, 160), None, (48, 40))],
)
def test_mask_is_binary_and_aligned_with_the_image_transform(image_size, crop, original) -> None:
    h, w = original
    img, mask = square_image_and_mask(h, w, top=h // 2, left=2 * (w // 10), side=2 * (min(h, w) // 8))
    pre = Preprocess(image_size=image_size, crop_size=crop)
    out = pre.mask(mask)
    image = pre.resized(img)[0].numpy()
    assert out.dtype == bool and out.shape == pre.output_size
    assert bbox(out) == bbox(image > 0.5)
    assert out[image > 0.9].all() and not out[image < 0.1].any()  # only edge pixels may differ
def test_soft_mask_values_become_binary() -> None:
    soft = np.array([[0, 1, 128], [255, 0, 3]], np.uint8)
    out = Preprocess(image_size=(2, 3), crop_size=None).mask(soft)
    assert out.tolist() == [[False, True, True], [True, False, True]]


def test_to_original_restores_size_with_nan_outside_the_crop() -> None:
    pre = Preprocess(image_size=(8, 8), crop_size=(4, 4))
    back = pre.to_original(torch.ones(1, 4, 4), (8, 8))
    expected = torch.full((1, 8, 8), float("nan"))
    expected[:, 2:6, 2:6] = 1.0
    assert torch.allclose(back, expected, atol=0, rtol=0, equal_nan=True)
    big = pre.to_original(torch.ones(2, 4, 4), (32, 24))
    assert big.shape == (2, 32, 24)
    assert big[:, 0, 0].isnan().all() and big[:, -1, -1].isnan().all()
    assert big[:, 16, 12].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


def test_to_original_inverts_the_layout_of_a_non_square_map() -> None:
    pre = Preprocess(image_size=(96, 160), crop_size=None)
    amap = torch.zeros(1, 96, 160)
    amap[:, :, 80:] = 1.0  # right half hot
    back = pre.to_original(amap, (48, 80))
    assert back.shape == (1, 48, 80)
    assert back[0, :, :35].max() < 0.05 and back[0, :, 45:].min() > 0.95


# ---------------------------------------------------------------------------------------- batching
@pytest.mark.parametrize("workers", [0, 2])  # decoded in the caller's thread, or prefetched by two threads
def test_iter_batches_sizes_names_and_original_sizes_in_input_order(workers: int) -> None:
    sizes = [(10 + i, 20 - i) for i in range(7)]
    items = [Item(f"img{i}", np.zeros((h, w, 3), np.uint8)) for i, (h, w) in enumerate(sizes)]
    pre = Preprocess(image_size=(16, 16), crop_size=None)
    batches = list(iter_batches(items, pre, batch_size=3, workers=workers))
    assert [b.pixels.shape[0] for b in batches] == [3, 3, 1]
    assert all(b.pixels.shape[1:] == (3, 16, 16) for b in batches)
    assert [n for b in batches for n in b.names] == [f"img{i}" for i in range(7)]
    assert [s for b in batches for s in b.original_sizes] == sizes


def test_decoding_threads_only_where_torch_leaves_cores_free(monkeypatch) -> None:
    from padim.data import decode_threads

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert decode_threads(None) == 0 and decode_threads(3) == 3
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert decode_threads(None) == 2


def test_iter_batches_pixels_follow_their_names() -> None:
    items = [Item(f"v{i}", np.full((4, 4), i * 30, np.uint8)) for i in range(5)]
    pre = Preprocess(image_size=(4, 4), crop_size=None)
    pixels = torch.cat([b.pixels for b in iter_batches(items, pre, batch_size=2, workers=3)])
    for i in range(5):
        assert torch.allclose(pixels[i], pre(items[i].load()))
    assert len(torch.unique(pixels[:, 0, 0, 0])) == 5


def test_iter_batches_names_the_bad_file(tmp_path: Path) -> None:
    good = write_png(tmp_path / "good.png", size=8)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnope")
    pre = Preprocess(image_size=(8, 8), crop_size=None)
    with pytest.raises(PadimError) as exc:
        list(iter_batches(as_items([good, bad]), pre, batch_size=1))
    assert str(bad) in str(exc.value)


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(PadimError, match="batch size"):
        list(iter_batches([Item("x", np.zeros((4, 4), np.uint8))], Preprocess(), batch_size=0))
