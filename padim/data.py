"""Images in, normalised tensors out: the paper's preprocessing, the accepted kinds of input, batching.

Decoding a single image (formats, EXIF orientation, colour modes) is padim.images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from padim import paper
from padim.errors import InputError
from padim.images import (DEFAULT_MAX_PIXELS, Size, array_to_tensor, check_max_pixels, decode_errors, list_images,
                          pil_to_tensor, read_image, tensor_to_tensor)


def as_size(value: int | Sequence[int] | None) -> Size | None:
    """Normalise an int or (height, width) to a (height, width) tuple of positive ints."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    size = tuple(int(v) for v in value)
    if len(size) != 2 or min(size) < 1:
        raise InputError(f"image size must be a positive int or (height, width), got {value!r}")
    return size  # type: ignore[return-value]


@dataclass(frozen=True)
class Preprocess:
    """Resize (bicubic), optional center crop, ImageNet normalisation (paper, Section IV-B).

    Parameters
    ----------
    image_size : (int, int)
        (height, width) every image is resized to.
    crop_size : (int, int) or None
        (height, width) of the center crop of the resized image; None: no crop.
    mean, std : (float, float, float)
        Per-channel normalisation of pixels in [0, 1].

    Attributes
    ----------
    output_size : (int, int)
        (height, width) of the tensors fed to the backbone: the crop, else the resized image.
    """

    image_size: Size = (paper.MVTEC_RESIZE, paper.MVTEC_RESIZE)
    crop_size: Size | None = (paper.MVTEC_CROP, paper.MVTEC_CROP)
    mean: tuple[float, float, float] = paper.IMAGENET_MEAN
    std: tuple[float, float, float] = paper.IMAGENET_STD

    def __post_init__(self) -> None:
        if self.crop_size is not None and (
            self.crop_size[0] > self.image_size[0] or self.crop_size[1] > self.image_size[1]
        ):
            raise InputError(f"crop size {self.crop_size} is larger than image size {self.image_size}")

    @classmethod
    def from_sizes(cls, image_size: int | Sequence[int], crop_size: int | Sequence[int] | None) -> "Preprocess":
        """The pipeline for an int or (height, width) image size and crop size (None: no crop)."""
        return cls(as_size(image_size), as_size(crop_size))  # type: ignore[arg-type]

    @property
    def output_size(self) -> Size:
        """Height and width of the tensors fed to the backbone."""
        return self.crop_size or self.image_size

    def crop_box(self) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the crop inside the resized image."""
        h, w = self.image_size
        ch, cw = self.output_size
        return int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0)), ch, cw

    def resized(self, rgb: torch.Tensor) -> torch.Tensor:
        """Resize and crop a (3, H, W) float image in [0, 1], without normalising (for display)."""
        x = resize(rgb[None], self.image_size).clamp_(0.0, 1.0)[0]
        top, left, ch, cw = self.crop_box()
        return x[:, top : top + ch, left : left + cw]

    def __call__(self, rgb: torch.Tensor) -> torch.Tensor:
        """Turn a (3, H, W) float image in [0, 1] into the normalised backbone input."""
        x = self.resized(rgb)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(3, 1, 1)
        return (x - mean) / std

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """Apply the image's resize (nearest neighbour, stays binary) and crop to an HxW mask."""
        t = torch.from_numpy(np.asarray(mask) > 0).to(torch.uint8)[None, None]
        t = F.interpolate(t, size=self.image_size, mode="nearest-exact")[0, 0]
        top, left, ch, cw = self.crop_box()
        return t[top : top + ch, left : left + cw].numpy().astype(bool)

    def inspected_fraction(self) -> tuple[float, float]:
        """Shares of an image's height and width the model sees (the centre crop; 1.0 without one)."""
        (h, w), (ch, cw) = self.image_size, self.output_size
        return ch / h, cw / w

    def to_original(self, maps: torch.Tensor, original_size: Size) -> torch.Tensor:
        """Map (B, h, w) maps on the preprocessed grid back onto an original image's grid.

        Pixels cut away by the crop were never seen by the model: they are NaN, "not inspected"
        (drawn hatched in overlays), and so are the few next to them whose bicubic interpolation
        reaches into that border. A defect there can never read as a low score.
        """
        top, left, ch, cw = self.crop_box()
        if self.crop_size is not None:
            canvas = maps.new_full((maps.shape[0], *self.image_size), float("nan"))
            canvas[:, top : top + ch, left : left + cw] = maps
            maps = canvas
        return resize(maps[:, None], original_size)[:, 0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, stored in model files."""
        return {
            "image_size": list(self.image_size),
            "crop_size": list(self.crop_size) if self.crop_size else None,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": "bicubic",
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        """Inverse of to_dict."""
        return cls(
            image_size=as_size(d["image_size"]),  # type: ignore[arg-type]
            crop_size=as_size(d["crop_size"]),
            mean=tuple(d["mean"]),  # type: ignore[arg-type]
            std=tuple(d["std"]),  # type: ignore[arg-type]
        )


def full_frame_size(height: int, width: int, *, area: int = paper.MVTEC_CROP**2, multiple: int = 32) -> Size:
    """Backbone input size that covers a whole height x width frame (no crop): its aspect ratio kept,
    about `area` pixels (the paper's 224 x 224 crop: the same positions, memory and time), sides a
    multiple of 32 (the deepest stride of the backbones, so the feature grid divides evenly)."""
    if min(height, width) < 1:
        raise InputError(f"frame size must be positive, got {height}x{width}")
    scale = math.sqrt(area / (height * width))
    return tuple(max(multiple, round(n * scale / multiple) * multiple) for n in (height, width))  # type: ignore[return-value]


def resize(x: torch.Tensor, size: Size) -> torch.Tensor:
    """Bicubic resize of a (B, C, H, W) tensor, antialiased when shrinking like PIL."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=shrinking)


@dataclass(frozen=True)
class Item:
    """One input image: a display name and where its pixels come from.

    Parameters
    ----------
    name : str
        Shown in results and errors (the path, or e.g. "array[3]").
    source : Path, PIL image, numpy array or torch tensor
        Where the pixels come from.

    Attributes
    ----------
    name, source
        As given.
    """

    name: str
    source: Any

    def load(self, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
        """Decode to (3, H, W) float in [0, 1]; files and PIL images upright by their EXIF orientation."""
        if isinstance(self.source, Path):
            return read_image(self.source, max_pixels)
        if isinstance(self.source, Image.Image):
            with decode_errors(self.name):
                return pil_to_tensor(ImageOps.exif_transpose(self.source), self.name)
        if isinstance(self.source, np.ndarray):
            return array_to_tensor(self.source, self.name)
        return tensor_to_tensor(self.source, self.name)


def as_items(images: Any) -> list[Item]:
    """Accept a folder, a file, a list of paths/PIL images/arrays/tensors, an NxHxWxC array or NxCxHxW tensor."""
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        files = list_images(path) if path.is_dir() else [path]
        return [Item(str(p), p) for p in files]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [Item(f"array[{i}]", a) for i, a in enumerate(images)]
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return [Item(f"tensor[{i}]", t) for i, t in enumerate(images)]
    if isinstance(images, (Image.Image, np.ndarray, torch.Tensor)):
        images = [images]
    if not isinstance(images, Sequence) and not hasattr(images, "__iter__"):
        raise InputError(f"cannot read images from a {type(images).__name__}")
    items = []
    for i, obj in enumerate(images):
        if isinstance(obj, Item):
            items.append(obj)
        elif isinstance(obj, (str, os.PathLike)):
            items.append(Item(str(obj), Path(obj)))
        elif isinstance(obj, (Image.Image, np.ndarray, torch.Tensor)):
            items.append(Item(f"{type(obj).__name__}[{i}]", obj))
        else:
            raise InputError(f"input {i}: cannot read an image from a {type(obj).__name__}")
    if not items:
        raise InputError("no images given")
    return items


@dataclass
class Batch:
    """A batch of preprocessed images with their names and original sizes.

    Parameters
    ----------
    pixels : torch.Tensor
        (B, 3, h, w) normalised backbone input.
    names : list of str
        The images' names, in batch order.
    original_sizes : list of (int, int)
        (height, width) of each image as decoded (upright), before preprocessing.

    Attributes
    ----------
    pixels, names, original_sizes
        As given.
    """

    pixels: torch.Tensor
    names: list[str]
    original_sizes: list[Size]

    def part(self, sl: slice) -> "Batch":
        """The images of a slice of the batch."""
        return Batch(self.pixels[sl], self.names[sl], self.original_sizes[sl])


def _prepare(item: Item, preprocess: Preprocess, max_pixels: int | None) -> tuple[torch.Tensor, Size]:
    """Load and preprocess one item."""
    rgb = item.load(max_pixels)
    return preprocess(rgb), (int(rgb.shape[1]), int(rgb.shape[2]))


def decode_threads(workers: int | None) -> int:
    """Background decoding threads: as asked, or (None) up to 2 only where torch leaves CPU cores free.

    Decoding beside torch's own threads oversubscribes the cores and stalls its OpenMP barriers:
    on 2 cores, R18 predict ran at 32.8 img/s with 2 decoding threads and 38.5 img/s without.
    """
    if workers is not None:
        return max(0, int(workers))
    return max(0, min(2, (os.cpu_count() or 1) - torch.get_num_threads()))


def iter_batches(
    items: list[Item], preprocess: Preprocess, batch_size: int, *, workers: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Iterator[Batch]:
    """Yield preprocessed batches; with decoding threads, the next batch is decoded during the caller's work."""
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    check_max_pixels(max_pixels)
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    threads = decode_threads(workers)
    if threads == 0:
        for chunk in chunks:
            yield _batch(chunk, [_prepare(item, preprocess, max_pixels) for item in chunk])
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:

        def submit(chunk: list[Item]) -> list:
            return [pool.submit(_prepare, item, preprocess, max_pixels) for item in chunk]

        pending = submit(chunks[0]) if chunks else []
        for k, chunk in enumerate(chunks):
            results = [f.result() for f in pending]
            pending = submit(chunks[k + 1]) if k + 1 < len(chunks) else []
            yield _batch(chunk, results)


def _batch(chunk: list[Item], results: list[tuple[torch.Tensor, Size]]) -> Batch:
    """Stack preprocessed images into a Batch."""
    return Batch(pixels=torch.stack([r[0] for r in results]), names=[it.name for it in chunk],
                 original_sizes=[r[1] for r in results])


def check_finite(values: torch.Tensor, batch: Batch, problem: str = "backbone produced NaN/inf features") -> None:
    """Refuse a batch whose per-image values hold NaN/inf, naming the first image concerned."""
    bad = ~torch.isfinite(values.reshape(len(batch.names), -1)).all(dim=1)
    if bool(bad.any()):
        names = [n for n, b in zip(batch.names, bad.tolist()) if b]
        raise InputError(f"{names[0]}: {problem} ({len(names)} image(s) in batch)")


def progress(batches: Iterable[Batch], *, desc: str, total: int, verbose: bool) -> Iterable[Batch]:
    """The batches, with a progress bar on stderr when verbose."""
    from tqdm.auto import tqdm

    return tqdm(batches, total=total, desc=desc, unit="batch", disable=not verbose, leave=False)


def n_batches(n_items: int, batch_size: int) -> int:
    """Number of batches iter_batches yields."""
    return math.ceil(n_items / batch_size)
