"""Model files: safetensors tensors + JSON metadata with a format version; atomic writes, no pickle.

Since format version 2 the metadata holds `tensor_sha256`, a SHA-256 over every tensor's name, dtype,
shape and bytes, checked on every read: a flipped bit in the data is a one-line error, never a score.
Version 1 files (written before checksums) are still read, with a warning that their data cannot be
checked; saving such a model again writes version 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from padim.utils.atomic import atomic_write
from padim.errors import PadimError

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
        raise PadimError(f"{path}: {kind.noun} file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(kind.key)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise PadimError(f"{path}: not a {kind.what} (unreadable safetensors: {exc})") from None
    if raw is None:
        raise PadimError(f"{path}: not a {kind.what} (no {kind.key} metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise PadimError(f"{path}: corrupt {kind.noun} metadata") from None
    if not isinstance(meta, dict) or meta.get("format") != kind.format:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise PadimError(f"{path}: not a {kind.what} (format {found!r})")
    version = meta.get("format_version")
    if not kind.reads(version):
        readable = f"{kind.oldest} to {kind.version}" if kind.oldest else f"{kind.version}"
        raise PadimError(
            f"{path}: {kind.noun} format version {version!r} is not supported by this torch-padim "
            f"(reads version {readable}); use the torch-padim version that wrote it "
            f"({meta.get('library_version', 'unknown')})"
        )
    check_checksum(path, tensors, meta, kind)
    return tensors, meta


def check_checksum(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], kind: FileKind) -> None:
    """Refuse tensor data that does not match the stored checksum; warn for files older than checksums."""
    from padim.errors import PadimWarning

    stored = meta.get(CHECKSUM_KEY)
    if stored is None:
        if kind.checksum_from is not None and meta["format_version"] >= kind.checksum_from:
            raise PadimError(f"{path}: {kind.noun} metadata has no {CHECKSUM_KEY} (format version "
                             f"{meta['format_version']} requires one): the file was altered or is incomplete")
        if kind.checksum_from is not None:
            warnings.warn(f"{path}: {kind.noun} format version {meta['format_version']} has no tensor checksum, "
                          f"so corrupted data cannot be detected: save the model again to add one",
                          PadimWarning, stacklevel=3)
        return
    if stored != tensor_sha256(tensors):
        raise PadimError(f"{path}: tensor data does not match its checksum ({CHECKSUM_KEY}): the file is corrupt "
                         f"(damaged or partly copied); restore it or fit again")
