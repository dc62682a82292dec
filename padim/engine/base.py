"""The engine's contract: a tapped backbone with its patch embedding, and the runner every engine subclasses."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from padim.backbone import FeatureExtractor
from padim.embedding import embed_positions


class TapEmbedding(nn.Module):
    """Tapped backbone + patch embedding: normalised (B, 3, H, W) -> (h*w, B, d), positions first.

    Parameters
    ----------
    extractor : FeatureExtractor
        The tapped backbone.
    kept : list of torch.Tensor
        Per tap, the indices of the channels kept (padim.embedding.split_by_tap).

    Attributes
    ----------
    extractor : FeatureExtractor
        The tapped backbone.
    kept : list of torch.Tensor
        Copies of the kept channel indices.
    """

    def __init__(self, extractor: FeatureExtractor, kept: list[torch.Tensor]) -> None:
        super().__init__()
        self.extractor = extractor
        self.kept = [k.clone() for k in kept]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embeddings of a normalised batch."""
        return embed_positions(self.extractor(x), self.kept)


class Engine:
    """Runs a TapEmbedding on one device; subclasses differ in the runtime.

    Parameters
    ----------
    device : torch.device
        Where the embeddings are computed and returned.
    threads : int
        CPU threads the runtime uses.

    Attributes
    ----------
    name : str
        The engine's name, one of padim.engine.ENGINES.
    device, threads
        As given.
    """

    name = "torch"

    def __init__(self, device: torch.device, threads: int) -> None:
        self.device = device
        self.threads = threads

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(h*w, B, d) float32 embeddings on this engine's device for a normalised batch.

        The result may live in the engine's own buffers: use it (or copy it) before the next call.
        """
        raise NotImplementedError

    def version(self) -> str:
        """Version of the runtime behind this engine."""
        return torch.__version__

    def lanes(self) -> list["Engine"]:
        """Engines sharing this one's threads, to run the parts of a batch side by side (padim.lanes); [] for none."""
        return []

    def describe(self) -> str:
        """One line for logs and `padim info`: engine, version, device, threads."""
        return f"{self.name} {self.version()} on {self.device}" + (
            f", {self.threads} threads" if self.device.type == "cpu" else "")


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    """A contiguous float32 CPU array of a batch (no copy when it already is one)."""
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
