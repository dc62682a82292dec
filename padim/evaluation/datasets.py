"""Evaluation datasets on disk: MVTec AD and ShanghaiTech Campus (STC); plain folders are padim.evaluation.folders.

Every loader returns a Split: training image paths (all normal) and test Samples (image, label, defect type,
ground-truth mask reference). Masks are read lazily, at the image's own size, and can be transformed exactly like
their images with padim.evaluation.transforms (the Preprocess pipeline, or the non-aligned protocol of Section V-C).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from padim import paper
from padim.errors import InputError, PadimError
from padim.images import IMAGE_SUFFIXES, image_files, load_upright, open_image

MVTEC_TEXTURES = paper.MVTEC_TEXTURES
MVTEC_OBJECTS = paper.MVTEC_OBJECTS
MVTEC_CATEGORIES = MVTEC_TEXTURES + MVTEC_OBJECTS

GOOD = "good"
MASK_SUFFIX = "_mask.png"  # MVTec AD: ground_truth/<defect>/<stem>_mask.png

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class MaskRef:
    """Where a ground-truth mask lives: a PNG file, or frame `index` of an (N, H, W) .npy stack.

    Parameters
    ----------
    path : Path
        The mask image, or the .npy stack.
    index : int or None
        The frame in the stack; None for a mask image.

    Attributes
    ----------
    path, index
        As given.
    """

    path: Path
    index: int | None = None

    def __str__(self) -> str:
        return str(self.path) if self.index is None else f"{self.path}[{self.index}]"


@dataclass(frozen=True)
class Sample:
    """One test image: its file, label (0 good, 1 defective), defect type and ground-truth mask.

    Parameters
    ----------
    image : Path
        The test image.
    label : int
        0 good, 1 defective.
    defect : str
        Defect type ("good" for a good image).
    mask : MaskRef or None
        Its ground truth; None for a good image (and for defective ones of a set without masks).

    Attributes
    ----------
    image, label, defect, mask
        As given.
    """

    image: Path
    label: int
    defect: str = GOOD
    mask: MaskRef | None = None

    def load_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean HxW ground truth at the image's size `shape`; all False for a good sample."""
        shape = (int(shape[0]), int(shape[1]))
        if self.mask is None:
            if self.label == 1:
                raise InputError(f"{self.image}: defective test image has no ground-truth mask")
            return np.zeros(shape, dtype=bool)
        mask = _read_npy_frame(self.mask) if self.mask.index is not None else read_png_mask(self.mask.path)
        if mask.shape != shape:
            raise InputError(
                f"{self.mask}: mask is {mask.shape[0]}x{mask.shape[1]} "
                f"but its image {self.image} is {shape[0]}x{shape[1]}"
            )
        return mask


def read_png_mask(path: Path) -> np.ndarray:
    """Pixels > 0 of a mask image (any channel) as a bool HxW array."""
    if not path.is_file():
        raise InputError(f"{path}: ground-truth mask file is missing")
    try:
        with open_image(path, str(path)) as img:
            load_upright(img, str(path))
            pixels = np.asarray(img)
    except PadimError as exc:
        raise InputError(f"{exc} (ground-truth mask)") from None
    if pixels.ndim == 3:
        pixels = pixels[:, :, :3].max(axis=2)  # RGB(A) masks: any colour channel marks the defect
    return pixels > 0


@lru_cache(maxsize=16)
def _open_npy(path: str, mtime_ns: int, size: int) -> np.ndarray:
    """A memory-mapped .npy array (cached per file version)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable .npy mask file ({exc})") from None


def _load_npy(path: Path) -> np.ndarray:
    """A memory-mapped .npy array, with a one-line error when missing or unreadable."""
    try:
        stat = path.stat()
    except OSError:
        raise InputError(f"{path}: mask file is missing") from None
    return _open_npy(str(path), stat.st_mtime_ns, stat.st_size)


def _read_npy_frame(ref: MaskRef) -> np.ndarray:
    """Frame `ref.index` of an (N, H, W) .npy mask stack, > 0, as bool."""
    stack = _load_npy(ref.path)
    if stack.ndim != 3:
        raise InputError(f"{ref.path}: expected an (n_frames, H, W) mask array, got shape {stack.shape}")
    if not 0 <= ref.index < stack.shape[0]:  # type: ignore[operator]
        raise InputError(f"{ref.path}: no frame {ref.index} (the file holds {stack.shape[0]} frames)")
    return np.asarray(stack[ref.index]) > 0


@dataclass
class Split:
    """A dataset category: normal training images and labelled test samples.

    Parameters
    ----------
    name : str
        The category ("bottle", "stc", ...).
    train : list of Path
        Training images, all normal.
    test : list of Sample
        Labelled test images.

    Attributes
    ----------
    name, train, test
        As given.
    labels : numpy.ndarray
        Test labels, int64.
    test_images : list of Path
        Test image paths, in test order.
    good_test, defective_test : list of Sample
        The test samples of each label.
    defects : list of str
        Sorted defect types in the test set.
    has_masks : bool
        Whether every defective sample has a mask (pixel-level evaluation possible).
    """

    name: str
    train: list[Path]
    test: list[Sample] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        """Test labels (0 good, 1 defective) as an int array."""
        return np.array([s.label for s in self.test], dtype=np.int64)

    @property
    def test_images(self) -> list[Path]:
        """Test image paths, in test order."""
        return [s.image for s in self.test]

    @property
    def good_test(self) -> list[Sample]:
        """Test samples labelled good."""
        return [s for s in self.test if s.label == 0]

    @property
    def defective_test(self) -> list[Sample]:
        """Test samples labelled defective."""
        return [s for s in self.test if s.label == 1]

    @property
    def defects(self) -> list[str]:
        """Sorted defect types present in the test set (without 'good')."""
        return sorted({s.defect for s in self.test if s.label == 1})

    @property
    def has_masks(self) -> bool:
        """True when every defective test sample has a ground-truth mask (pixel-level evaluation possible)."""
        return all(s.mask is not None for s in self.defective_test)

    def __repr__(self) -> str:
        return (f"Split({self.name!r}, train={len(self.train)}, test={len(self.test)} "
                f"({len(self.defective_test)} defective))")


# --------------------------------------------------------------------------------------------------- helpers


def _natural_key(path: Path) -> tuple:
    """Sort key putting frame 2 before frame 10."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def subfolders(folder: Path) -> list[Path]:
    """Visible subfolders, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def sorted_images(folder: Path) -> list[Path]:
    """Visible image files directly inside a folder, naturally sorted (possibly empty; hidden ones skipped)."""
    return sorted(image_files(folder), key=_natural_key)


def require_folder(path: Path, what: str) -> Path:
    """The path, or an InputError when it is not an existing folder."""
    if not path.exists():
        raise InputError(f"{path}: no such folder ({what})")
    if not path.is_dir():
        raise InputError(f"{path}: not a folder ({what})")
    return path


def _check_stride(value: int, name: str) -> int:
    """Validate a frame stride."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------------- MVTec AD


def mvtec_category(root: PathLike, category: str) -> Split:
    """One category of an MVTec AD root: <root>/<category>/{train/good, test/<defect>, ground_truth/<defect>}."""
    root = require_folder(Path(root), "MVTec AD root")
    folder = root / category
    if not folder.is_dir():
        present = ", ".join(p.name for p in subfolders(root)) or "nothing"
        raise InputError(f"{folder}: no category '{category}' in {root} (present: {present})")
    train_dir = require_folder(folder / "train" / GOOD, "MVTec AD training images")
    train = sorted_images(train_dir)
    if not train:
        raise InputError(f"{train_dir}: no training images ({', '.join(IMAGE_SUFFIXES)})")
    return Split(category, train, _mvtec_test(folder))


def _mvtec_test(folder: Path) -> list[Sample]:
    """Test samples of one MVTec AD category, sorted by defect type then name."""
    test_dir = require_folder(folder / "test", "MVTec AD test images")
    defect_dirs = subfolders(test_dir)
    if not defect_dirs:
        raise InputError(f"{test_dir}: no defect-type subfolders (expected test/good and test/<defect>)")
    samples = []
    for defect_dir in defect_dirs:
        defect = defect_dir.name
        for image in sorted_images(defect_dir):
            if defect == GOOD:
                samples.append(Sample(image, 0, GOOD, None))
                continue
            mask = folder / "ground_truth" / defect / f"{image.stem}{MASK_SUFFIX}"
            if not mask.is_file():
                raise InputError(f"{mask}: missing ground-truth mask for test image {image}")
            samples.append(Sample(image, 1, defect, MaskRef(mask)))
    if not samples:
        raise InputError(f"{test_dir}: no test images in any defect-type subfolder")
    return samples


def mvtec(root: PathLike, categories: str | list[str] | tuple[str, ...] | None = None) -> list[Split]:
    """Several MVTec AD categories; by default the official ones present under root."""
    root = require_folder(Path(root), "MVTec AD root")
    if categories is None:
        categories = [c for c in MVTEC_CATEGORIES if (root / c).is_dir()]
        if not categories:
            raise InputError(_not_mvtec_message(root))
    elif isinstance(categories, str):
        categories = [categories]
    if not categories:
        raise InputError(f"{root}: no categories requested")
    return [mvtec_category(root, c) for c in categories]


def _not_mvtec_message(root: Path) -> str:
    """Why a folder is not an MVTec AD root, with a hint when it is a single category."""
    if (root / "train" / GOOD).is_dir():
        return (f"{root}: this is one category folder, not an MVTec AD root; pass its parent {root.parent} "
                f"(with category '{root.name}')")
    present = ", ".join(p.name for p in subfolders(root)) or "nothing"
    return (f"{root}: not an MVTec AD root: expected category folders such as {root / MVTEC_CATEGORIES[0]}/train/good "
            f"(one of {', '.join(MVTEC_CATEGORIES)}; present: {present})")


# --------------------------------------------------------------------------------------------------- STC


def stc(root: PathLike, train_stride: int = 1, test_stride: int = 1) -> Split:
    """ShanghaiTech Campus: normal training frames, test frames with frame labels and pixel masks."""
    root = require_folder(Path(root), "ShanghaiTech Campus root")
    train_stride, test_stride = _check_stride(train_stride, "train_stride"), _check_stride(test_stride, "test_stride")
    return Split("stc", _stc_train(root, train_stride), _stc_test(root, test_stride))


def _stc_train(root: Path, stride: int) -> list[Path]:
    """Every stride-th frame of every training video (frames pre-extracted under training/frames/<video>/)."""
    frames_dir = root / "training" / "frames"
    if not frames_dir.is_dir():
        videos = root / "training" / "videos"
        if videos.is_dir() and any(videos.glob("*.avi")):
            raise InputError(
                f"{frames_dir}: no such folder; extract the training videos in {videos} to "
                f"{frames_dir}/<video>/<frame>.jpg first (e.g. ffmpeg -i 01_001.avi -q:v 2 01_001/%03d.jpg)"
            )
        require_folder(frames_dir, "STC training frames, training/frames/<video>/<frame>.jpg")
    videos = subfolders(frames_dir)
    if not videos:
        raise InputError(f"{frames_dir}: no video folders (expected training/frames/<video>/<frame>.jpg)")
    train = [frame for video in videos for frame in sorted_images(video)[::stride]]
    if not train:
        raise InputError(f"{frames_dir}: the video folders hold no frames ({', '.join(IMAGE_SUFFIXES)})")
    return train


def _stc_test(root: Path, stride: int) -> list[Sample]:
    """Every stride-th frame of every test video, labelled by test_frame_mask, masked by test_pixel_mask."""
    testing = require_folder(root / "testing", "STC test data")
    frames_dir = require_folder(testing / "frames", "STC test frames, testing/frames/<video>/<frame>.jpg")
    pixel_dir = require_folder(testing / "test_pixel_mask", "STC pixel masks, testing/test_pixel_mask/<video>.npy")
    label_dir = require_folder(testing / "test_frame_mask", "STC frame labels, testing/test_frame_mask/<video>.npy")
    videos = subfolders(frames_dir)
    if not videos:
        raise InputError(f"{frames_dir}: no video folders (expected testing/frames/<video>/<frame>.jpg)")
    names = {v.name for v in videos}
    for stray in sorted(pixel_dir.glob("*.npy")):
        if stray.stem not in names:
            raise InputError(
                f"{stray}: pixel mask of video '{stray.stem}' but no frames folder {frames_dir / stray.stem}"
            )
    return [s for video in videos for s in _stc_video(video, pixel_dir, label_dir, stride)]


def _stc_video(video: Path, pixel_dir: Path, label_dir: Path, stride: int) -> list[Sample]:
    """The test samples of one STC video, after checking its masks match its frames."""
    frames = sorted_images(video)
    if not frames:
        raise InputError(f"{video}: test video folder has no frames")
    pixel_path, label_path = pixel_dir / f"{video.name}.npy", label_dir / f"{video.name}.npy"
    for path in (pixel_path, label_path):
        if not path.is_file():
            raise InputError(f"{path}: missing mask file for test video '{video.name}' ({len(frames)} frames)")
    pixels = _load_npy(pixel_path)
    if pixels.ndim != 3:
        raise InputError(f"{pixel_path}: expected an (n_frames, H, W) pixel mask array, got shape {pixels.shape}")
    labels = np.asarray(_load_npy(label_path)).reshape(-1)
    for path, count in ((pixel_path, pixels.shape[0]), (label_path, labels.shape[0])):
        if count != len(frames):
            raise InputError(f"{path}: video '{video.name}' has {len(frames)} frames but its mask has {count}")
    return [
        Sample(frames[i], int(labels[i] > 0), "abnormal" if labels[i] > 0 else GOOD, MaskRef(pixel_path, i))
        for i in range(0, len(frames), stride)
    ]
