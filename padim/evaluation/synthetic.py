"""A small MVTec-AD-like inspection dataset built from scikit-image's bundled texture photos."""

from __future__ import annotations

import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from padim import paper
from padim.evaluation.datasets import mvtec_category
from padim.errors import InputError

TEXTURES = ("brick", "grass", "gravel")
DEFECT_KINDS = ("scratch", "stain", "hole", "foreign")

TRAIN_FRACTION = 0.6  # train crops come from rows above this fraction of the photo, test crops from below
MIN_SIZE = 32
AREA_RANGE = (0.02, 0.08)  # defect area as a fraction of the image


@lru_cache(maxsize=None)
def load_texture(name: str) -> np.ndarray:
    """The 512x512 grayscale uint8 photo of a bundled texture."""
    if name not in TEXTURES:
        raise InputError(f"unknown texture {name!r}; choose one of {TEXTURES}")
    import skimage.data

    photo = getattr(skimage.data, name)()
    photo.setflags(write=False)
    return photo


def _test_band_start(height: int) -> int:
    """First row of the test band; rows above it belong to the train band."""
    return int(height * TRAIN_FRACTION)


def _crop_origin(height: int, width: int, size: int, split: str, rng: np.random.Generator) -> tuple[int, int]:
    """Random (top, left) of a size x size crop lying entirely inside the train or test band."""
    boundary = _test_band_start(height)
    lo, hi = (0, boundary - size) if split == "train" else (boundary, height - size)
    if hi < lo or width < size:
        raise InputError(f"crop size {size} does not fit in the {split} band of a {height}x{width} photo")
    return int(rng.integers(lo, hi + 1)), int(rng.integers(0, width - size + 1))


def _good_part(photo: np.ndarray, size: int, split: str, rng: np.random.Generator) -> np.ndarray:
    """A defect-free RGB crop with natural variation: offset, optional mirror, slight brightness change."""
    top, left = _crop_origin(*photo.shape, size, split, rng)
    crop = photo[top : top + size, left : left + size].astype(np.float32)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = crop * rng.uniform(0.96, 1.04)
    return _to_rgb_uint8(crop)


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Round, clip and stack a grayscale or RGB array into an RGB uint8 array."""
    out = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=2) if out.ndim == 2 else out


def _defect_area(shape: tuple[int, int], rng: np.random.Generator) -> float:
    """A random defect area in pixels within AREA_RANGE of the image."""
    return rng.uniform(*AREA_RANGE) * shape[0] * shape[1]


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinate arrays of an image."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    return rows.astype(np.float32), cols.astype(np.float32)


def _blend(image: np.ndarray, target: np.ndarray | float, alpha: np.ndarray) -> np.ndarray:
    """Per-pixel mix of image towards target with weights alpha (HxW)."""
    a = alpha[..., None]
    return image * (1.0 - a) + np.asarray(target, dtype=np.float32) * a


def _polyline_distance(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """Distance of every pixel to a polyline given as (N, 2) row/col vertices."""
    rows, cols = _grid(shape)
    dist = np.full(shape, np.inf, dtype=np.float32)
    for (r0, c0), (r1, c1) in zip(points[:-1], points[1:]):
        dr, dc = r1 - r0, c1 - c0
        t = np.clip(((rows - r0) * dr + (cols - c0) * dc) / max(dr * dr + dc * dc, 1e-6), 0.0, 1.0)
        dist = np.minimum(dist, np.hypot(rows - (r0 + t * dr), cols - (c0 + t * dc)))
    return dist


def _random_polyline(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A long, gently bending polyline between two far-apart points inside the image."""
    size = np.array(shape, dtype=np.float32)
    for _ in range(20):
        start, end = rng.uniform(0.08, 0.92, (2, 2)) * size
        if np.hypot(*(end - start)) >= 0.45 * size.min():
            break
    n_bends = int(rng.integers(1, 4))
    t = np.linspace(0.0, 1.0, n_bends + 2)[:, None]
    normal = np.array([start[1] - end[1], end[0] - start[0]]) / max(np.hypot(*(end - start)), 1e-6)
    bend = np.concatenate([[0.0], rng.normal(0.0, 0.05 * size.min(), n_bends), [0.0]])[:, None]
    return (start + t * (end - start) + bend * normal).astype(np.float32)


def _scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One or two thin bright or dark scratches."""
    shape = image.shape[:2]
    alpha = np.zeros(shape, dtype=np.float32)
    for _ in range(1 if rng.random() < 0.65 else 2):
        half_width = rng.uniform(2.0, 4.0) / 2
        dist = _polyline_distance(shape, _random_polyline(shape, rng))
        alpha = np.maximum(alpha, np.clip(half_width + 0.5 - dist, 0.0, 1.0))  # 1 px anti-aliased edge
    target = rng.uniform(205, 245) if rng.random() < 0.5 else rng.uniform(10, 40)
    streak = rng.normal(0.0, 6.0, shape).astype(np.float32)  # uneven scratch surface
    out = _blend(image, (target + streak)[..., None], 0.85 * alpha)
    return out, alpha >= 0.5


def _ellipse(shape: tuple[int, int], center: np.ndarray, radii: np.ndarray, angle: float) -> np.ndarray:
    """Boolean mask of a rotated filled ellipse."""
    rows, cols = _grid(shape)
    dr, dc = rows - center[0], cols - center[1]
    u = dr * np.cos(angle) + dc * np.sin(angle)
    v = -dr * np.sin(angle) + dc * np.cos(angle)
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2 <= 1.0


def _blob_center(shape: tuple[int, int], radius: float, rng: np.random.Generator) -> np.ndarray:
    """A random center keeping a blob of the given radius mostly inside the image."""
    margin = np.minimum(radius + 2, np.array(shape) / 2 - 1)
    return np.array([rng.uniform(margin[0], shape[0] - margin[0]), rng.uniform(margin[1], shape[1] - margin[1])])


def _stain(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged, irregular, tinted dark blob."""
    shape = image.shape[:2]
    radius = np.sqrt(0.7 * _defect_area(shape, rng) / np.pi)
    center = _blob_center(shape, radius, rng)
    aspect = rng.uniform(0.7, 1.4)
    blob = _ellipse(shape, center, radius * np.array([aspect, 1 / aspect]), rng.uniform(0, np.pi))
    for _ in range(int(rng.integers(2, 4))):
        offset = rng.normal(0.0, 0.45 * radius, 2)
        blob |= _ellipse(shape, center + offset, radius * rng.uniform(0.35, 0.7, 2), rng.uniform(0, np.pi))
    soft = ndimage.gaussian_filter(blob.astype(np.float32), sigma=max(1.0, 0.15 * radius))
    alpha = np.clip((soft - 0.15) / 0.6, 0.0, 1.0)
    tint = np.array([0.75, 0.6, 0.45], dtype=np.float32) * rng.uniform(0.75, 0.95)  # brownish darkening
    return _blend(image, image * tint, alpha), alpha >= 0.5


def _hole(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark, slightly oval pit with a lighter rim."""
    shape = image.shape[:2]
    rim_width = rng.uniform(2.0, 4.0)
    radius = max(3.0, np.sqrt(_defect_area(shape, rng) / np.pi) - rim_width)
    center = _blob_center(shape, 1.15 * radius + rim_width, rng)
    aspect, angle = rng.uniform(0.85, 1.15), rng.uniform(0, np.pi)
    rows, cols = _grid(shape)
    dr, dc = rows - center[0], cols - center[1]
    u = (dr * np.cos(angle) + dc * np.sin(angle)) / aspect
    v = (-dr * np.sin(angle) + dc * np.cos(angle)) * aspect
    dist = np.hypot(u, v)
    # a pit lit from one side: darkest near the centre, a little light on one inner wall
    light = np.cos(np.arctan2(v, u) - rng.uniform(0, 2 * np.pi))
    depth = rng.uniform(10, 25) + 30 * (dist / radius) ** 2 * (0.6 + 0.4 * light)
    floor = depth[..., None] + 0.12 * (image - image.mean())
    out = np.where((dist <= radius)[..., None], floor, image)
    rim = (dist > radius) & (dist <= radius + rim_width)
    out = _blend(out, rng.uniform(195, 230), 0.75 * rim.astype(np.float32))
    return out, dist <= radius + rim_width


def _polygon(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of a random star-shaped polygon of about the defect area."""
    from skimage.draw import polygon

    n = int(rng.integers(7, 12))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(0.75, 1.25, n)
    # scale so the polygon area matches the drawn defect area (shoelace formula on unit radii)
    unit_area = 0.5 * np.sum(radii * np.roll(radii, -1) * np.sin(np.diff(angles, append=angles[0] + 2 * np.pi)))
    scale = np.sqrt(_defect_area(shape, rng) / unit_area)
    center = _blob_center(shape, 1.25 * scale, rng)
    rr, cc = polygon(center[0] + scale * radii * np.sin(angles), center[1] + scale * radii * np.cos(angles), shape)
    mask = np.zeros(shape, dtype=bool)
    mask[rr, cc] = True
    return mask


def _foreign(image: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A patch of another texture pasted inside a random polygon."""
    mask = _polygon(image.shape[:2], rng)
    patch = donor.astype(np.float32)
    inside, donor_inside = image[mask].mean(), patch[mask].mean()
    # shift the donor's brightness away from the surroundings so the patch stands out
    sign = 1.0 if inside < 128 else -1.0
    patch = patch + (inside + sign * rng.uniform(40, 70) - donor_inside)
    return np.where(mask[..., None], patch, image), mask


def paint_defect(
    image: np.ndarray, kind: str, rng: np.random.Generator, donor: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of the given kind; return the defective RGB uint8 copy and its boolean mask."""
    if kind not in DEFECT_KINDS:
        raise InputError(f"unknown defect kind {kind!r}; choose one of {DEFECT_KINDS}")
    if image.ndim not in (2, 3) or min(image.shape[:2]) < MIN_SIZE:
        raise InputError(f"image must be HxW or HxWx3 and at least {MIN_SIZE} px a side, got {image.shape}")
    base = _to_rgb_uint8(image).astype(np.float32)
    if kind == "foreign":
        if donor is None or donor.shape[:2] != image.shape[:2]:
            got = None if donor is None else donor.shape
            raise InputError(f"'foreign' needs a donor image of shape {image.shape[:2]}, got {got}")
        out, mask = _foreign(base, _to_rgb_uint8(donor).astype(np.float32), rng)
    else:
        out, mask = {"scratch": _scratch, "stain": _stain, "hole": _hole}[kind](base, rng)
    return _to_rgb_uint8(out), mask


def _border_band(size: int) -> int:
    """Width in pixels of the band the paper's centre crop (256 -> 224) never sees, on each side."""
    return max(1, round(size * (paper.MVTEC_RESIZE - paper.MVTEC_CROP) / 2 / paper.MVTEC_RESIZE))


def move_to_border(good: np.ndarray, defective: np.ndarray, mask: np.ndarray,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The defect (every pixel the painter changed) moved so its centre lies in the outer band of one side."""
    changed = np.any(defective != good, axis=2) | mask
    rows, cols = np.nonzero(changed)
    if rows.size == 0:
        return defective, mask
    h, w = mask.shape
    band = _border_band(min(h, w))
    target = [rng.uniform(0, h), rng.uniform(0, w)]
    side = int(rng.integers(4))  # top, bottom, left, right
    axis, extent = side // 2, (h, w)[side // 2]
    target[axis] = rng.uniform(0, band) if side % 2 == 0 else rng.uniform(extent - band, extent)
    dy, dx = int(round(target[0] - rows.mean())), int(round(target[1] - cols.mean()))
    nr, nc = rows + dy, cols + dx
    keep = (nr >= 0) & (nr < h) & (nc >= 0) & (nc < w)
    out, moved = good.copy(), np.zeros_like(mask)
    out[nr[keep], nc[keep]] = defective[rows[keep], cols[keep]]
    moved[nr[keep], nc[keep]] = mask[rows[keep], cols[keep]]
    return out, moved


def _save(path: Path, array: np.ndarray) -> None:
    """Write an array as a PNG, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, compress_level=1)


def _write_set(
    category: Path, texture: str, n_train: int, n_test_good: int, n_test_defect: int, size: int, seed: int,
    defects_at: str = "anywhere",
) -> None:
    """Write all images and masks of one category into an empty folder."""
    rng = np.random.default_rng(seed)
    photo = load_texture(texture)
    for i in range(n_train):
        _save(category / "train" / "good" / f"{i:03d}.png", _good_part(photo, size, "train", rng))
    for i in range(n_test_good):
        _save(category / "test" / "good" / f"{i:03d}.png", _good_part(photo, size, "test", rng))
    kinds = [DEFECT_KINDS[i % len(DEFECT_KINDS)] for i in range(n_test_defect)]
    counters = dict.fromkeys(DEFECT_KINDS, 0)
    others = [t for t in TEXTURES if t != texture]
    for kind in rng.permutation(kinds):
        good = _good_part(photo, size, "test", rng)
        donor = _good_part(load_texture(others[rng.integers(len(others))]), size, "train", rng)
        defective, mask = paint_defect(good, str(kind), rng, donor)
        if defects_at == "border":
            defective, mask = move_to_border(good, defective, mask, rng)
        name = f"{counters[kind]:03d}"
        counters[kind] += 1
        _save(category / "test" / str(kind) / f"{name}.png", defective)
        _save(category / "ground_truth" / str(kind) / f"{name}_mask.png", mask.astype(np.uint8) * 255)


def make_inspection_set(
    root: str | Path,
    texture: str = "brick",
    *,
    n_train: int = 40,
    n_test_good: int = 10,
    n_test_defect: int = 20,
    size: int = 192,
    seed: int = 0,
    defects_at: str = "anywhere",
) -> Path:
    """Write (replacing any previous one) an MVTec-AD-like category under root/<texture>/ and return it.

    defects_at="border" puts every defect's centre in the outer band the paper's 256 -> 224 centre
    crop never sees (6.25% of the side), to measure what a preprocessing covers.
    """
    if defects_at not in ("anywhere", "border"):
        raise InputError(f"defects_at must be 'anywhere' or 'border', got {defects_at!r}")
    if texture not in TEXTURES:
        raise InputError(f"unknown texture {texture!r}; choose one of {TEXTURES}")
    if min(n_train, n_test_good, n_test_defect) < 0:
        raise InputError("image counts must not be negative")
    photo_height = load_texture(texture).shape[0]
    largest = photo_height - _test_band_start(photo_height)
    if not MIN_SIZE <= size <= largest:
        raise InputError(f"size must be between {MIN_SIZE} and {largest} for the test band to hold a crop, got {size}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    category = root / texture
    # build beside the target and swap in, so a failure never leaves a half-written or stale mix
    staging = Path(tempfile.mkdtemp(prefix=f".{texture}-", dir=root))
    try:
        _write_set(staging, texture, n_train, n_test_good, n_test_defect, size, seed, defects_at)
        if category.exists():
            shutil.rmtree(category)
        staging.rename(category)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return category


def load_split(category_dir: str | Path) -> tuple[list[Path], list[Path], list[Path | None]]:
    """Train image paths, test image paths and each test image's mask path (None for good parts).

    The set is in MVTec AD's layout, so it is read by padim.evaluation.datasets' parser of that layout.
    """
    category = Path(category_dir)
    split = mvtec_category(category.parent, category.name)
    return split.train, split.test_images, [None if s.mask is None else s.mask.path for s in split.test]
