"""Model files: safetensors tensors + JSON metadata with a format version; atomic writes, no pickle.

A PaDiM model file holds the network's fitted buffers (`mean`, `precision_cholesky`: W's packed lower
triangles, `channel_indices`, with PCA `projection`), the frame check's statistics (`frame_mean`,
`frame_scatter`), the calibration's sorted scores (`calibration_*`) and, when saved with statistics,
the packed `scatter`; the metadata says how to rebuild the estimator (PaDiM.metadata). This module
owns that layout and its checks; PaDiM.save and PaDiM.load are the API.

Since format version 2 the metadata holds `tensor_sha256`, a SHA-256 over every tensor's name, dtype,
shape and bytes, checked on every read: a flipped bit in the data is a one-line error, never a score.
Version 1 files (written before checksums) are still read, with a warning that their data cannot be
checked; saving such a model again writes version 2.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from padim import staircase
from padim.backbone import RANDOM, Backbone, build_backbone
from padim.calibration import Calibration
from padim.data import Preprocess
from padim.errors import ModelFileError, PadimEnvironmentError, PadimError, PadimWarning
from padim.frame import FrameStats
from padim.gaussian import GaussianStats
from padim.network import PadimNet
from padim.utils.atomic import atomic_write
from padim.utils.constraints import FILE_CONSTRAINTS, check_value

if TYPE_CHECKING:
    from padim.model import PaDiM

FORMAT = "torch-padim"
# Version 2 adds the tensor checksum and the frame check's statistics (tensors frame_mean, frame_scatter,
# metadata "frame"): an older reader would drop that check silently, so it must refuse these files;
# version 1 files still load here, with the frame check off and a warning that nothing can check their data.
FORMAT_VERSION = 2
CHECKSUM_KEY = "tensor_sha256"
_META_KEY = "padim"


@dataclass(frozen=True)
class FileKind:
    """One of our safetensors formats: its marker, version, metadata key and names in messages."""

    format: str
    version: int
    key: str
    what: str  # "a <what>" in messages
    noun: str  # "<noun> file not found", "corrupt <noun> metadata"
    oldest: int | None = None  # oldest version still read (None: only `version`)
    checksum_from: int | None = None  # versions from this one must hold a checksum (None: checked if present)

    def reads(self, version: Any) -> bool:
        """Whether this library reads files of this version."""
        return isinstance(version, int) and not isinstance(version, bool) and (self.oldest or self.version) <= version <= self.version


MODEL = FileKind(FORMAT, FORMAT_VERSION, _META_KEY, "torch-padim model file", "model", oldest=1, checksum_from=2)


def tensor_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order (independent of the file layout)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def write_model(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                kind: FileKind = MODEL) -> None:
    """Write tensors and metadata (format and version added) atomically."""
    from safetensors.torch import save_file

    payload = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {"format": kind.format, "format_version": kind.version, **meta, CHECKSUM_KEY: tensor_sha256(payload)}
    atomic_write(path, lambda tmp: save_file(payload, tmp, metadata={kind.key: json.dumps(header)}))


def read_model(path: str | os.PathLike, kind: FileKind = MODEL) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and check a file of this kind: safetensors, our format marker, a version we understand."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: {kind.noun} file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(kind.key)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise ModelFileError(f"{path}: not a {kind.what} (unreadable safetensors: {exc})") from None
    if raw is None:
        raise ModelFileError(f"{path}: not a {kind.what} (no {kind.key} metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise ModelFileError(f"{path}: corrupt {kind.noun} metadata") from None
    if not isinstance(meta, dict) or meta.get("format") != kind.format:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelFileError(f"{path}: not a {kind.what} (format {found!r})")
    version = meta.get("format_version")
    if not kind.reads(version):
        readable = f"{kind.oldest} to {kind.version}" if kind.oldest else f"{kind.version}"
        raise ModelFileError(
            f"{path}: {kind.noun} format version {version!r} is not supported by this torch-padim "
            f"(reads version {readable}); use the torch-padim version that wrote it "
            f"({meta.get('library_version', 'unknown')})"
        )
    check_checksum(path, tensors, meta, kind)
    return tensors, meta


def check_checksum(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], kind: FileKind) -> None:
    """Refuse tensor data that does not match the stored checksum; warn for files older than checksums."""
    stored = meta.get(CHECKSUM_KEY)
    if stored is None:
        if kind.checksum_from is not None and meta["format_version"] >= kind.checksum_from:
            raise ModelFileError(f"{path}: {kind.noun} metadata has no {CHECKSUM_KEY} (format version "
                             f"{meta['format_version']} requires one): the file was altered or is incomplete")
        if kind.checksum_from is not None:
            warnings.warn(f"{path}: {kind.noun} format version {meta['format_version']} has no tensor checksum, "
                          f"so corrupted data cannot be detected: save the model again to add one",
                          PadimWarning, stacklevel=3)
        return
    if stored != tensor_sha256(tensors):
        raise ModelFileError(f"{path}: tensor data does not match its checksum ({CHECKSUM_KEY}): the file is corrupt "
                         f"(damaged or partly copied); restore it or fit again")


# ----------------------------------------------------------------------------- PaDiM model files
def model_metadata(model: PaDiM) -> dict[str, Any]:
    """What a fitted model holds, JSON-ready (PaDiM.metadata: the file's header, `padim info`)."""
    from padim._version import __version__

    bb = model.backbone_
    return {
        "library_version": __version__,
        "created": model.created_,
        "backbone": {"name": bb.name, "layers": list(bb.layers), "channels": list(bb.channels),
                     "strides": list(bb.strides), "weights": bb.source.to_dict()},
        "n_features": model.embedding_dim_,
        "n_features_total": int(sum(bb.channels)),
        "reduction": model.reduction,
        "seed": int(model.seed),
        "eps": float(model.eps),
        "sigma": float(model.sigma),
        "preprocessing": model.preprocessing.to_dict(),
        "feature_shape": list(model.feature_shape_),
        "n_samples_seen": int(model.n_samples_seen_),
        "frame": _frame_meta(model.frame_stats_),
    }


def _frame_meta(stats: FrameStats | None) -> dict[str, Any] | None:
    """The frame check's scalars (its Gaussian travels as tensors), or None when it is off."""
    if stats is None:
        return None
    return {"summary": "mean and std over positions of each embedding channel", "dim": int(stats.gaussian.dim),
            "n_images": int(stats.n), "contrast_min": float(stats.contrast_min)}


def model_contents(model: PaDiM, path: str | os.PathLike, statistics: bool,
                   half: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and metadata of a fitted model's file (see PaDiM.save)."""
    meta = model.metadata()
    meta["precision_dtype"] = "float16" if half else "float32"
    factor = staircase.to_packed(model.net_.factor)  # the file stores W's lower triangle
    if half and not bool(torch.isfinite(factor.half()).all()):
        raise PadimError(f"{path}: the inverse covariance factors exceed float16's range: save without half "
                         f"(--half) or fit with a larger eps")
    tensors = {
        "mean": model.mean_,
        "precision_cholesky": factor.half() if half else factor,
        "channel_indices": model.channel_indices_,
    }
    if model.components_ is not None:
        tensors["projection"] = model.components_
    if model.frame_stats_ is not None:  # small (2d x 2d): kept even without statistics, it scores frames
        tensors["frame_mean"] = model.frame_stats_.gaussian.mean[0]
        tensors["frame_scatter"] = model.frame_stats_.gaussian.packed_scatter()[0]
    calibration = getattr(model, "calibration_", None)
    if calibration is not None:
        meta["calibration"] = calibration.to_meta()
        tensors["calibration_image_scores"] = torch.from_numpy(calibration.image_scores)
        tensors["calibration_pixel_sample"] = torch.from_numpy(calibration.pixel_sample)
        if calibration.frame_scores is not None:
            tensors["calibration_frame_scores"] = torch.from_numpy(calibration.frame_scores)
    meta["statistics"] = bool(statistics)
    if statistics:
        if model.stats_ is None:
            raise PadimError("this model has no statistics to save (it was loaded without them)")
        tensors["scatter"] = model.stats_.packed_scatter()
    return tensors, meta


def read_contents(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A checked model file's tensors and metadata; the tensors a model keeps as they are copied out of the file."""
    tensors, meta = read_model(path)
    # The file is memory-mapped: copy what the model keeps, so that once the big factor and scatter
    # are unpacked nothing references the mapping and its pages leave the resident set.
    return {k: v if k in ("precision_cholesky", "scatter") else v.clone() for k, v in tensors.items()}, meta


@contextmanager
def file_problems(path: str | os.PathLike) -> Iterator[None]:
    """Turn what goes wrong while checking and installing a file's contents into one line naming the file.

    A missing package, weights or device stays a PadimEnvironmentError; anything else is the file's
    fault: a ModelFileError.
    """
    try:
        yield
    except PadimError as exc:
        kind = PadimEnvironmentError if isinstance(exc, PadimEnvironmentError) else ModelFileError
        if isinstance(exc, kind) and str(path) in str(exc):
            raise
        raise kind(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{path}: model metadata incomplete or malformed ({type(exc).__name__}: {exc})") from None


def check_values(meta: dict) -> None:
    """Bound the values only a model file sets (the constructor's parameters are checked by PaDiM)."""
    rules = FILE_CONSTRAINTS
    check_value("n_samples_seen", meta["n_samples_seen"], rules["n_samples_seen"])
    shape = meta["feature_shape"]
    if not isinstance(shape, list) or len(shape) != 2:
        raise ModelFileError(f"feature_shape must be [height, width], got {shape!r}")
    for side in shape:
        check_value("feature_shape", side, rules["feature_side"])
    channels = meta["backbone"]["channels"]
    if not isinstance(channels, list) or not channels:
        raise ModelFileError(f"backbone channels must be a non-empty list, got {channels!r}")
    for c in channels:
        check_value("backbone channels", c, rules["channels"])
    check_value("precision_dtype", meta.get("precision_dtype"), rules["precision_dtype"])
    check_value("statistics", meta.get("statistics", False), rules["statistics"])


def estimator_params(meta: dict, weights: Any) -> dict[str, Any]:
    """The PaDiM parameters the file was fitted with, once checked; weights=None finds the recorded ones."""
    check_values(meta)
    bb, pre = meta["backbone"], meta["preprocessing"]
    source = bb["weights"]
    if weights is None:
        weights = RANDOM if source["kind"] == RANDOM else (source["path"] if source["kind"] == "file" else None)
    return dict(
        backbone=bb["name"], layers=tuple(bb["layers"]), n_features=meta["n_features"],
        reduction=meta.get("reduction", "random"), eps=meta["eps"],
        image_size=tuple(pre["image_size"]), crop_size=tuple(pre["crop_size"]) if pre["crop_size"] else None,
        seed=meta["seed"], weights=weights, sigma=meta["sigma"],
    )


def checked_backbone(path: Any, meta: dict, tensors: dict, model: PaDiM) -> Backbone:
    """The backbone of a model built from the file's parameters, once it and the tensors are checked."""
    if Preprocess.from_dict(meta["preprocessing"]) != model.preprocessing:
        raise ModelFileError(f"{path}: preprocessing in the file is not one this version can reproduce")
    source = meta["backbone"]["weights"]
    backbone = build_backbone(model.backbone, layers=model.layers, weights=model.weights, seed=source.get("seed") or 0)
    _check_backbone(path, backbone, meta)
    check_tensors(path, tensors, meta, sum(backbone.channels))
    return backbone


def _check_backbone(path: Any, backbone: Backbone, meta: dict) -> None:
    """Refuse a rebuilt backbone whose weights or taps differ from those the model was fitted with."""
    bb = meta["backbone"]
    source = bb["weights"]
    if backbone.source.sha256 != source["sha256"]:
        raise ModelFileError(
            f"{path}: backbone weights differ from those the model was fitted with "
            f"(sha256 {backbone.source.sha256[:12]}... at {backbone.source.path}, expected {source['sha256'][:12]}...): "
            f"pass the original weights with weights=PATH (CLI: --weights PATH)"
        )
    if list(backbone.channels) != list(bb["channels"]):
        raise ModelFileError(f"{path}: backbone taps give {backbone.channels} channels, the file says {bb['channels']}")


def check_tensors(path: Any, tensors: dict, meta: dict, n_total: int) -> None:
    """Refuse tensors missing, of other shapes or dtypes than the metadata implies, or not finite."""
    h, w = meta["feature_shape"]
    d, n_pos = int(meta["n_features"]), int(h) * int(w)
    pca = meta.get("reduction", "random") == "pca"
    expected = {
        "mean": ((n_pos, d), torch.float64),
        "precision_cholesky": ((n_pos, d * (d + 1) // 2),
                               torch.float16 if meta.get("precision_dtype") == "float16" else torch.float32),
        "channel_indices": ((n_total if pca else d,), torch.int64),
    }
    if pca:
        expected["projection"] = ((n_total, d), torch.float32)
    if meta.get("statistics"):
        expected["scatter"] = ((n_pos, d * (d + 1) // 2), torch.float64)
    if meta.get("frame") is not None:
        expected["frame_mean"] = ((2 * d,), torch.float64)
        expected["frame_scatter"] = ((d * (2 * d + 1),), torch.float64)  # 2d(2d+1)/2
    for name, (shape, dtype) in expected.items():
        t = tensors.get(name)
        if t is None or tuple(t.shape) != shape or t.dtype != dtype:
            got = "missing" if t is None else f"{tuple(t.shape)} {t.dtype}"
            raise ModelFileError(f"{path}: tensor {name!r} is {got}, metadata implies {shape} {dtype}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelFileError(f"{path}: tensor {name!r} contains NaN or inf")
    idx = tensors["channel_indices"]
    if d and (int(idx.min()) < 0 or int(idx.max()) >= n_total):
        raise ModelFileError(f"{path}: channel indices out of range for this backbone")
    if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise ModelFileError(f"{path}: channel indices must be sorted and unique")
    n = int(meta["n_samples_seen"])
    if n < 1:
        raise ModelFileError(f"{path}: model was fitted on {n} images")


def network(path: Any, backbone: Backbone, tensors: dict, meta: dict, sigma: float, size: tuple[int, int],
            device: str) -> PadimNet:
    """The fitted network a checked file holds, on the device."""
    h, w = meta["feature_shape"]
    net = PadimNet(backbone, tensors["channel_indices"], sigma, size).to(device)
    if tuple(net.grid) != (int(h), int(w)):
        raise ModelFileError(f"{path}: the backbone gives a {net.grid} feature grid, the file says {(h, w)}")
    if meta.get("reduction", "random") == "pca":
        net.projection = tensors["projection"].to(device)
    stairs = staircase.from_packed(tensors.pop("precision_cholesky").to(device), int(meta["n_features"]))
    net.set_gaussians(tensors["mean"].to(device), stairs)
    return net


def statistics_from_file(tensors: dict, meta: dict, device: str) -> GaussianStats | None:
    """The stored statistics (tensors already checked), or None for a file saved without them."""
    if not meta.get("statistics"):
        return None
    return GaussianStats.from_packed(int(meta["n_samples_seen"]), tensors["mean"].to(device),
                                     tensors.pop("scatter").to(device))


def frame_from_file(path: Any, tensors: dict, meta: dict, device: str) -> FrameStats | None:
    """The stored frame statistics (tensors already checked), or None with a warning for older files."""
    info, n = meta.get("frame"), int(meta["n_samples_seen"])
    if info is None:
        warnings.warn(f"{path}: saved before the frame check (format v{meta.get('format_version')}): blank and "
                      f"foreign frames are not caught; refit to enable it", PadimWarning, stacklevel=4)
        return None
    contrast = info["contrast_min"]
    if not isinstance(contrast, (int, float)) or not math.isfinite(contrast) or contrast < 0:
        raise ModelFileError(f"{path}: frame contrast_min must be a finite number >= 0, got {contrast!r}")
    if info["n_images"] != n:
        raise ModelFileError(f"{path}: frame statistics of {info['n_images']!r} images, the model saw {n}")
    gaussian = GaussianStats.from_packed(n, tensors["frame_mean"][None].to(device),
                                         tensors["frame_scatter"][None].to(device))
    return FrameStats(gaussian, float(contrast))


def calibration_from_file(path: Any, tensors: dict, meta: dict) -> Calibration | None:
    """The stored calibration, checked, or None."""
    info = meta.get("calibration")
    if info is None:
        return None
    scores, pixels = tensors.get("calibration_image_scores"), tensors.get("calibration_pixel_sample")
    if scores is None or pixels is None or scores.ndim != 1 or pixels.ndim != 1 or len(scores) != info["n_images"]:
        raise ModelFileError(f"{path}: calibration tensors missing or inconsistent with the metadata")
    if not (torch.isfinite(scores).all() and torch.isfinite(pixels).all()):
        raise ModelFileError(f"{path}: calibration scores contain NaN or inf")
    frames = tensors.get("calibration_frame_scores")
    if frames is not None and (frames.shape != scores.shape or frames.dtype != torch.float64
                               or not torch.isfinite(frames).all() or meta.get("frame") is None):
        raise ModelFileError(f"{path}: calibration frame scores inconsistent with the image scores or not finite")
    return Calibration(scores.numpy(), pixels.numpy(), float(info["fpr"]), str(info["source"]),
                       None if frames is None else frames.numpy())
