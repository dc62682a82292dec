"""Model files: safetensors tensors + JSON metadata with a format version; atomic writes, no pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from padim.atomic import atomic_write
from padim.errors import PadimError

FORMAT = "torch-padim"
FORMAT_VERSION = 1
_META_KEY = "padim"


def write_model(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write tensors and metadata (format and version added) atomically."""
    from safetensors.torch import save_file

    header = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    payload = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(payload, tmp, metadata={_META_KEY: json.dumps(header)}))


def read_model(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and check a model file: safetensors, our format marker, a version we understand."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PadimError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise PadimError(f"{path}: not a torch-padim model file (unreadable safetensors: {exc})") from None
    if raw is None:
        raise PadimError(f"{path}: not a torch-padim model file (no padim metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise PadimError(f"{path}: corrupt model metadata") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise PadimError(f"{path}: not a torch-padim model file (format {found!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise PadimError(
            f"{path}: model format version {version!r} is not supported by this torch-padim "
            f"(reads version {FORMAT_VERSION}); use the torch-padim version that wrote it "
            f"({meta.get('library_version', 'unknown')})"
        )
    return tensors, meta
