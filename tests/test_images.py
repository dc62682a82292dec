"""Image decoding (files, PIL modes, arrays, tensors) and its bad-input errors: padim.images."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camera_files import (decoded_as_stored, frames, multi_frame, png_header, postscript_as_png, rotated_jpeg,
                          write_png)
from padim.data import Preprocess, as_items, iter_batches
from padim.images import DEFAULT_MAX_PIXELS, array_to_tensor, image_shape, list_images, pil_to_tensor, read_image
from padim.errors import ImageTooLarge, PadimError


def load_one(obj) -> torch.Tensor:
    """Decode an in-memory image through the same path the model uses."""
    (item,) = as_items(obj)
    return item.load()


def gradient_rgb(h: int = 6, w: int = 8) -> np.ndarray:
    """An RGB uint8 image whose three channels all differ."""
    rows, cols = np.mgrid[0:h, 0:w]
    return np.stack([rows * 40, cols * 30, 255 - rows * 20], axis=2).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- PIL modes
def test_grayscale_L_is_replicated_to_three_channels() -> None:
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    out = pil_to_tensor(Image.fromarray(gray, mode="L"), "g")
    assert out.shape == (3, 6, 8) and out.dtype == torch.float32
    for c in range(3):
        np.testing.assert_allclose(out[c].numpy(), gray / 255.0, atol=1e-7)


def test_rgb_channels_keep_their_order() -> None:
    rgb = gradient_rgb()
    out = pil_to_tensor(Image.fromarray(rgb, mode="RGB"), "rgb")
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), rgb / 255.0, atol=1e-7)


def test_rgba_alpha_is_dropped_not_blended() -> None:
    rgba = np.dstack([gradient_rgb(), np.zeros((6, 8), np.uint8)])  # fully transparent
    out = pil_to_tensor(Image.fromarray(rgba, mode="RGBA"), "rgba")
    assert out.shape == (3, 6, 8)
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), rgba[..., :3] / 255.0, atol=1e-7)


def test_palette_image_gives_its_palette_colours() -> None:
    img = Image.new("P", (4, 3))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    img.putpixel((1, 2), 1)
    out = pil_to_tensor(img, "p")
    assert out[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert out[:, 2, 1].tolist() == [0.0, 0.0, 1.0]


def test_one_bit_image_is_zero_or_one() -> None:
    bits = np.zeros((5, 7), dtype=bool)
    bits[1:3, 2:5] = True
    out = pil_to_tensor(Image.fromarray(bits).convert("1"), "bits")
    assert out.shape == (3, 5, 7)
    assert torch.equal(out[0], torch.from_numpy(bits.astype(np.float32)))


def test_cmyk_is_converted_to_rgb() -> None:
    img = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # no cyan, full magenta + yellow = red
    out = pil_to_tensor(img, "cmyk")
    assert out.shape == (3, 4, 4)
    assert out[:, 0, 0].tolist() == [1.0, 0.0, 0.0]


def test_16bit_png_uses_the_full_16bit_range(tmp_path: Path) -> None:
    pixels = np.array([[0, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(pixels).save(path)  # PIL writes 16-bit grayscale PNG; reads back as I;16 / I
    with Image.open(path) as img:
        assert img.mode.startswith("I")
    out = read_image(path)
    assert out.shape == (3, 1, 3)
    assert out[0, 0, 2].item() == 1.0
    assert out[0, 0, 1].item() == pytest.approx(0.5, abs=1e-4)  # PIL's convert("RGB") clips it to 1.0
    assert out[0, 0, 0].item() == 0.0


def test_32bit_integer_image_outside_16bit_range_is_not_silently_wrapped() -> None:
    img = Image.fromarray(np.array([[60000, 70000, -5]], dtype=np.int32))
    assert img.mode == "I"
    try:
        out = pil_to_tensor(img, "wide.tif")
    except PadimError as exc:
        assert "wide.tif" in str(exc)
        return
    assert out[0, 0, 1] >= out[0, 0, 0]  # brighter stays brighter
    assert out[0, 0, 2] <= out[0, 0, 0]


# ---------------------------------------------------------------------------------------- numpy, torch
@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 65535)])
def test_integer_arrays_are_scaled_by_their_type_range(dtype, top) -> None:
    arr = np.array([[0, top // 2, top]], dtype=dtype)
    out = load_one(arr)
    assert out.shape == (3, 1, 3)
    np.testing.assert_allclose(out[0].numpy(), [[0.0, (top // 2) / top, 1.0]], atol=1e-7)


def test_float_array_in_unit_range_is_kept_as_is() -> None:
    arr = np.linspace(0.0, 1.0, 24, dtype=np.float64).reshape(4, 6)
    np.testing.assert_allclose(load_one(arr)[1].numpy(), arr, atol=1e-7)


def test_bool_array_becomes_zero_and_one() -> None:
    arr = np.eye(4, dtype=bool)
    assert torch.equal(load_one(arr)[2], torch.eye(4))


def test_hxwx3_and_hxwx4_arrays() -> None:
    rgb = gradient_rgb()
    a = load_one(rgb)
    b = load_one(np.dstack([rgb, np.full((6, 8), 7, np.uint8)]))
    np.testing.assert_allclose(a.permute(1, 2, 0).numpy(), rgb / 255.0, atol=1e-7)
    assert torch.equal(a, b)


def test_torch_chw_tensor_matches_the_same_hwc_array() -> None:
    rgb = gradient_rgb()
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    assert torch.equal(load_one(chw), load_one(rgb))
    assert load_one(chw.float() / 255).shape == (3, 6, 8)


def test_nchw_batch_tensor_and_nhwc_array_split_into_items() -> None:
    batch = torch.rand(3, 3, 5, 7)
    items = as_items(batch)
    assert [it.name for it in items] == ["tensor[0]", "tensor[1]", "tensor[2]"]
    assert torch.allclose(items[2].load(), batch[2])
    arrays = as_items(np.zeros((2, 5, 7, 3), np.uint8))
    assert [it.load().shape for it in arrays] == [(3, 5, 7), (3, 5, 7)]


def test_bfloat16_tensor_is_decoded_or_refused_with_padim_error() -> None:
    t = torch.full((3, 4, 4), 0.5, dtype=torch.bfloat16)
    try:
        out = load_one(t)
    except PadimError:
        return
    assert torch.allclose(out, torch.full((3, 4, 4), 0.5))


# ---------------------------------------------------------------------------------------- bad in-memory input
def test_float_array_outside_unit_range_is_an_error() -> None:
    with pytest.raises(PadimError, match=r"\[0, 1\]"):
        load_one(np.full((4, 4), 2.0))
    with pytest.raises(PadimError, match=r"\[0, 1\]"):
        load_one(np.full((4, 4), -0.5))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_is_an_error_naming_the_input(bad: float) -> None:
    arr = np.zeros((4, 4, 3), np.float32)
    arr[1, 2, 0] = bad
    with pytest.raises(PadimError, match=r"probe\.png.*NaN or inf"):
        array_to_tensor(arr, "probe.png")
    with pytest.raises(PadimError, match=r"ndarray\[1\]"):
        [it.load() for it in as_items([np.zeros((4, 4)), arr])]


def test_int64_array_is_an_error() -> None:
    with pytest.raises(PadimError, match="int64"):
        load_one(np.zeros((4, 4), dtype=np.int64))


@pytest.mark.parametrize("channels", [2, 5])
def test_wrong_channel_count_is_an_error_naming_the_shape(channels: int) -> None:
    with pytest.raises(PadimError, match=rf"\(4, 6, {channels}\)"):
        load_one(np.zeros((4, 6, channels), np.uint8))
    with pytest.raises(PadimError, match=rf"\({channels}, 4, 6\)"):
        load_one(torch.zeros(channels, 4, 6))


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 5, 3)])
def test_empty_image_is_an_error(shape) -> None:
    with pytest.raises(PadimError, match="empty"):
        load_one(np.zeros(shape, np.uint8))


# ---------------------------------------------------------------------------------------- bad files
def test_good_png_decodes(tmp_path: Path) -> None:
    out = read_image(write_png(tmp_path / "ok.png"))
    assert out.shape == (3, 32, 32) and 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_empty_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(PadimError, match="empty") as exc:
        read_image(path)
    assert str(path) in str(exc.value)


def test_truncated_png_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write_png(tmp_path / "cut.png", size=64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PadimError) as exc:
        read_image(path)
    assert str(path) in str(exc.value)


def test_text_file_named_png_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n" * 10)
    with pytest.raises(PadimError) as exc:
        read_image(path)
    assert str(path) in str(exc.value)


def test_missing_path_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.png"
    with pytest.raises(PadimError) as exc:
        read_image(path)
    assert str(path) in str(exc.value)
    with pytest.raises(PadimError) as exc:
        [it.load() for it in as_items(str(path))]
    assert str(path) in str(exc.value)


def test_empty_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "nothing"
    folder.mkdir()
    with pytest.raises(PadimError, match="no images") as exc:
        as_items(folder)
    assert str(folder) in str(exc.value)


def test_folder_with_only_text_files_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.TXT").write_text("y")
    with pytest.raises(PadimError, match="no images") as exc:
        list_images(tmp_path)
    assert str(tmp_path) in str(exc.value)


def test_folder_lists_images_sorted_skipping_other_files(tmp_path: Path) -> None:
    for name in ("b.png", "a.PNG", "c.jpg"):
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG" if "png" in name.lower() else "JPEG")
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.png", "c.jpg"]


# ---------------------------------------------------------------------------------------- camera files
def test_postscript_named_png_is_refused_without_running_ghostscript(tmp_path: Path, monkeypatch) -> None:
    from PIL import EpsImagePlugin

    def no_ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript was run")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_ghostscript)
    raw = tmp_path / "raw.png"
    raw.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    for path in (postscript_as_png(tmp_path / "eps.png"), raw):
        with pytest.raises(PadimError, match="not a readable image") as exc:
            read_image(path)
        assert str(path) in str(exc.value) and "accepted: PNG, JPEG" in str(exc.value)


def test_pixel_count_is_checked_from_the_header_before_decoding(tmp_path: Path) -> None:
    bomb = png_header(tmp_path / "bomb.png", 10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either: one error, ours
        with pytest.raises(ImageTooLarge, match="10000x10000 = 100,000,000 pixels exceeds the limit of 40,000,000") as exc:
            read_image(bomb)
    assert str(bomb) in str(exc.value) and "\n" not in str(exc.value)
    assert DEFAULT_MAX_PIXELS == 40_000_000


def test_pixel_limit_is_a_parameter(tmp_path: Path) -> None:
    path = write_png(tmp_path / "ok.png", size=100)  # 10,000 pixels
    with pytest.raises(ImageTooLarge, match="exceeds the limit of 9,999 pixels"):
        read_image(path, max_pixels=9_999)
    assert read_image(path, max_pixels=10_000).shape == (3, 100, 100)
    with pytest.raises(ImageTooLarge, match=str(path)):
        next(iter_batches(as_items(tmp_path), Preprocess((8, 8), None), 1, workers=0, max_pixels=9_999))
    for bad in (0, -5, 2.5, True, "many"):
        with pytest.raises(PadimError, match="max_pixels must be a positive integer"):
            read_image(path, max_pixels=bad)


def test_pillows_own_bomb_limit_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    bomb = png_header(tmp_path / "huge.png", 50_000, 50_000)  # over twice Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLarge, match="MAX_IMAGE_PIXELS") as exc:
        read_image(bomb, max_pixels=None)
    assert str(exc.value).startswith(f"{bomb}: ") and "\n" not in str(exc.value)


@pytest.mark.parametrize("name", ["anim.gif", "pages.tiff"])
def test_multi_frame_file_uses_the_first_frame_and_says_so(tmp_path: Path, name: str) -> None:
    path = multi_frame(tmp_path / name, 3)
    with pytest.warns(UserWarning, match="holds 3 frames or pages; only the first is used") as record:
        rgb = read_image(path)
    assert str(path) in str(record[0].message)
    expected = np.asarray(frames(1)[0], dtype=np.float32) / 255
    assert np.abs(rgb.permute(1, 2, 0).numpy() - expected).max() < 0.02


def test_single_frame_file_gives_no_warning(tmp_path: Path) -> None:
    path = multi_frame(tmp_path / "still.gif", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(path)


@pytest.mark.parametrize("orientation, turn", [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)),
                                               (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1))])
def test_exif_orientation_turns_camera_images_upright(tmp_path: Path, orientation: int, turn) -> None:
    path = rotated_jpeg(tmp_path / "cam.jpg", orientation)
    stored = decoded_as_stored(path)
    assert stored.shape == (24, 40, 3)  # landscape as the sensor wrote it
    upright = (read_image(path).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(upright, np.ascontiguousarray(turn(stored)))
    assert image_shape(path) == upright.shape[:2]
    with Image.open(path) as img:  # a PIL image given to the API is turned the same way
        assert torch.equal(load_one(img), read_image(path))


def test_exif_orientation_6_gives_a_portrait_tensor(tmp_path: Path) -> None:
    assert read_image(rotated_jpeg(tmp_path / "cam.jpg", 6)).shape == (3, 40, 24)


def test_hidden_and_appledouble_files_are_skipped_and_counted(tmp_path: Path) -> None:
    write_png(tmp_path / "part.png")
    Image.new("RGB", (32, 32)).save(tmp_path / ".thumb.png")  # a black thumbnail: not a good part
    (tmp_path / "._part.png").write_bytes(b"\x00\x05\x16\x07" + b"\0" * 60)  # macOS AppleDouble: not an image
    (tmp_path / ".cache").mkdir()
    write_png(tmp_path / ".cache" / "x.png")
    with pytest.warns(UserWarning, match="skipped 2 hidden image file") as record:
        assert [p.name for p in list_images(tmp_path)] == ["part.png"]
    assert str(tmp_path) in str(record[0].message)
    with pytest.warns(UserWarning):
        assert [it.name for it in as_items(tmp_path)] == [str(tmp_path / "part.png")]


def test_folder_with_only_hidden_images_has_no_images(tmp_path: Path) -> None:
    write_png(tmp_path / ".a.png")
    with pytest.warns(UserWarning, match="skipped 1"), pytest.raises(PadimError, match="no images"):
        list_images(tmp_path)


def test_corrupt_exif_gives_one_warning_naming_the_file_and_the_pixels_are_read(tmp_path: Path) -> None:
    import struct

    ifd_claiming_5_entries_with_1 = (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 5)
                                     + struct.pack("<HHII", 0x0112, 3, 1, 6))
    path = tmp_path / "cam.jpg"
    Image.new("RGB", (16, 8), (0, 128, 255)).save(path, format="JPEG", exif=b"Exif\x00\x00" + ifd_claiming_5_entries_with_1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rgb = read_image(path)
    (warning,) = caught  # one line, naming the file (Pillow's own says neither which file nor once)
    assert str(warning.message).startswith(f"{path}: ") and "EXIF" in str(warning.message)
    assert "\n" not in str(warning.message)
    assert rgb.shape[0] == 3 and rgb.numel() == 3 * 16 * 8
