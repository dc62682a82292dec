"""What the backbone tests share: reading taps, comparing them, hashing files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def taps(backbone, x: torch.Tensor) -> list[torch.Tensor]:
    """The backbone's tapped maps of a batch."""
    with torch.inference_mode():
        return backbone.extractor(x)


def sha256_of(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_same_taps(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    """Equal shapes and values, tap by tap."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        assert torch.equal(x, y)
