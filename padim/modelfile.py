"""Model files: safetensors tensors + JSON metadata with a format version; atomic writes, no pickle."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from padim.atomic import atomic_write
from padim.errors import PadimError

FORMAT = "torch-padim"
# Version 2 adds the frame check's statistics (tensors frame_mean, frame_scatter, metadata "frame"):
# an older reader would drop that check silently, so it must refuse these files; version 1 files
# still load here, with the frame check off (PaDiM.load warns).
FORMAT_VERSION = 2
READS_ALSO = (1,)
_META_KEY = "padim"


@dataclass(frozen=True)
class FileKind:
    """One of our safetensors formats: its marker, version, metadata key and names in messages."""

    format: str
    version: int
    key: str
    what: str  # "a <what>" in messages
    noun: str  # "<noun> file not found", "corrupt <noun> metadata"
    reads_also: tuple[int, ...] = ()  # older versions this one still reads


MODEL = FileKind(FORMAT, FORMAT_VERSION, _META_KEY, "torch-padim model file", "model", READS_ALSO)


def write_model(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                kind: FileKind = MODEL) -> None:
    """Write tensors and metadata (format and version added) atomically."""
    from safetensors.torch import save_file

    header = {"format": kind.format, "format_version": kind.version, **meta}
    payload = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
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
    if type(version) is not int or (version != kind.version and version not in kind.reads_also):
        readable = ", ".join(str(v) for v in sorted((kind.version, *kind.reads_also)))
        raise PadimError(
            f"{path}: {kind.noun} format version {version!r} is not supported by this torch-padim "
            f"(reads version {readable}); use the torch-padim version that wrote it "
            f"({meta.get('library_version', 'unknown')})"
        )
    return tensors, meta
