"""A custom dataset in plain folders: good training images, test images grouped like MVTec AD's or flat, masks."""

from __future__ import annotations

from pathlib import Path

from padim.errors import InputError
from padim.evaluation.datasets import (GOOD, MASK_SUFFIX, MaskRef, PathLike, Sample, Split, read_png_mask,
                                       require_folder, sorted_images, subfolders)
from padim.images import IMAGE_SUFFIXES, list_images


def folder_split(
    train_dir: PathLike, test_dir: PathLike, *, mask_dir: PathLike | None = None, name: str = "folder"
) -> Split:
    """A custom dataset: good images in train_dir; test images in test_dir; optional masks in mask_dir.

    test_dir is either grouped, with subfolders named like MVTec AD's (``good/`` is label 0, any other folder is
    a defect type, label 1), or flat (images directly inside), in which case mask_dir is required and an image is
    defective (label 1, defect "defect") iff its mask exists and has a pixel set. A test image's mask is looked up as
    ``<mask_dir>/<relative path without suffix>_mask.png``, then ``<mask_dir>/<relative path>``, then the relative
    path with a ``.png`` suffix. In grouped mode a defective image without a mask is an error when mask_dir is
    given; without mask_dir samples carry no masks (image-level evaluation only).
    """
    train = list_images(train_dir)
    test_root = require_folder(Path(test_dir), "test images")
    masks = require_folder(Path(mask_dir), "ground-truth masks") if mask_dir is not None else None
    groups, loose = subfolders(test_root), sorted_images(test_root)
    if groups and loose:
        raise InputError(f"{test_root}: holds both images and subfolders; use either a flat folder or "
                         f"good/ and <defect>/ subfolders")
    test = _grouped_test(test_root, groups, masks) if groups else _flat_test(test_root, loose, masks)
    if not test:
        raise InputError(f"{test_root}: no test images ({', '.join(IMAGE_SUFFIXES)})")
    return Split(name, train, test)


def _find_mask(mask_dir: Path, relative: Path) -> Path | None:
    """The first existing mask file for an image at `relative` inside the test folder."""
    for candidate in (
        relative.with_name(relative.stem + MASK_SUFFIX),
        relative,
        relative.with_suffix(".png"),
    ):
        if (mask_dir / candidate).is_file():
            return mask_dir / candidate
    return None


def _grouped_test(test_root: Path, groups: list[Path], mask_dir: Path | None) -> list[Sample]:
    """Samples from good/ and <defect>/ subfolders."""
    samples = []
    for group in groups:
        for image in sorted_images(group):
            if group.name == GOOD:
                samples.append(Sample(image, 0, GOOD, None))
                continue
            mask = None
            if mask_dir is not None:
                relative = image.relative_to(test_root)
                mask = _find_mask(mask_dir, relative)
                if mask is None:
                    expected = mask_dir / relative.with_name(relative.stem + MASK_SUFFIX)
                    raise InputError(f"{expected}: missing ground-truth mask for test image {image}")
            samples.append(Sample(image, 1, group.name, MaskRef(mask) if mask else None))
    return samples


def _flat_test(test_root: Path, images: list[Path], mask_dir: Path | None) -> list[Sample]:
    """Samples from a flat folder, labelled by their masks."""
    if images and mask_dir is None:
        raise InputError(f"{test_root}: a flat test folder needs mask_dir to tell good from defective images "
                         f"(or sort the images into good/ and <defect>/ subfolders)")
    samples = []
    for image in images:
        mask = _find_mask(mask_dir, image.relative_to(test_root))  # type: ignore[arg-type]
        if mask is not None and read_png_mask(mask).any():
            samples.append(Sample(image, 1, "defect", MaskRef(mask)))
        else:
            samples.append(Sample(image, 0, GOOD, None))
    return samples
