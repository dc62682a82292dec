"""Ground truth and images transformed as the model sees them: masks through a Preprocess, and the paper's
non-aligned protocol (Section V-C), which rotates and crops each image and its mask alike."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from padim import paper
from padim.data import Preprocess, resize
from padim.errors import InputError
from padim.evaluation.datasets import Sample
from padim.images import image_shape


def transform_masks(samples: list[Sample], preprocess: Preprocess) -> np.ndarray:
    """(N, h, w) bool ground truth, each mask resized and cropped exactly like its image."""
    h, w = preprocess.output_size
    out = np.zeros((len(samples), h, w), dtype=bool)
    for i, sample in enumerate(samples):
        if sample.mask is not None or sample.label == 1:
            out[i] = preprocess.mask(sample.load_mask(image_shape(sample.image)))
    return out


def nonaligned(
    image: torch.Tensor,
    mask: np.ndarray | None,
    rng: np.random.Generator,
    *,
    resize: int = paper.NONALIGNED_RESIZE,
    crop: int = paper.NONALIGNED_CROP,
    max_degrees: float = paper.NONALIGNED_MAX_DEGREES,
) -> tuple[torch.Tensor, np.ndarray | None]:
    """Section V-C: resize, rotate by a random angle in (-max_degrees, max_degrees), random crop; same for the mask."""
    _check_nonaligned(image, mask, resize, crop, max_degrees)
    angle = float(rng.uniform(-max_degrees, max_degrees))
    top, left = int(rng.integers(0, resize - crop + 1)), int(rng.integers(0, resize - crop + 1))
    x = _resize_image(image.float(), resize)
    x = _rotate(x, angle, nearest=False).clamp_(0.0, 1.0)[:, top : top + crop, left : left + crop]
    if mask is None:
        return x.contiguous(), None
    m = torch.from_numpy(np.asarray(mask) > 0).to(torch.uint8)[None, None]
    m = F.interpolate(m, size=(resize, resize), mode="nearest-exact")[0]
    m = _rotate(m, angle, nearest=True)[0, top : top + crop, left : left + crop]
    return x.contiguous(), m.numpy().astype(bool)


def _check_nonaligned(image: torch.Tensor, mask: np.ndarray | None, resize: int, crop: int, max_degrees: float) -> None:
    """Validate nonaligned's arguments."""
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
        raise InputError(f"nonaligned: expected a (3, H, W) image tensor, got {shape}")
    if mask is not None and tuple(np.shape(mask)) != tuple(image.shape[1:]):
        raise InputError(
            f"nonaligned: mask shape {tuple(np.shape(mask))} differs from image size {tuple(image.shape[1:])}"
        )
    if not 1 <= crop <= resize:
        raise InputError(f"nonaligned: crop {crop} must be between 1 and the resize {resize}")
    if not max_degrees >= 0:
        raise InputError(f"nonaligned: max_degrees must be >= 0, got {max_degrees}")


def _resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize of a (3, H, W) image to size x size, clamped to [0, 1]."""
    return resize(image[None], (size, size)).clamp_(0.0, 1.0)[0]


def _rotate(x: torch.Tensor, angle: float, nearest: bool) -> torch.Tensor:
    """Rotate a (C, H, W) tensor about its centre (bilinear, or nearest for masks); corners filled with 0."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import rotate

    mode = InterpolationMode.NEAREST if nearest else InterpolationMode.BILINEAR
    return rotate(x, angle, interpolation=mode, fill=0.0)  # type: ignore[arg-type]
