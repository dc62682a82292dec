"""The fit's statistics pass and how a Shards object shares it (padim.fitting)."""

from __future__ import annotations

import pytest
import torch

from padim import PaDiM
from padim.evaluation.synthetic import load_split
from padim.fitting import OneProcess

from conftest import TINY


@pytest.fixture(scope="module")
def train(texture_set):
    return load_split(texture_set)[0]


class FirstHalf(OneProcess):
    """A lead process whose share is the first half of the images."""

    def mine(self, items: list) -> list:
        return items[: len(items) // 2]


class Follower(OneProcess):
    """A process that sends its statistics to the lead and receives nothing back."""

    def merge(self, stats):
        return None

    def merge_frames(self, frames):
        return None

    def share(self, tensor):
        # What a lead would broadcast in place of the follower's uninitialised tensor: orthonormal components.
        return torch.eye(*tensor.shape, dtype=tensor.dtype)


def test_the_shards_say_which_images_a_process_fits(train) -> None:
    shared = PaDiM(**TINY).fit(train, shards=FirstHalf())
    alone = PaDiM(**TINY).fit(train[: len(train) // 2])
    assert shared.n_samples_seen_ == alone.n_samples_seen_ == len(train) // 2
    assert torch.equal(shared.mean_, alone.mean_)
    assert torch.equal(shared.precision_cholesky_, alone.precision_cholesky_)


@pytest.mark.parametrize("reduction", ["random", "pca"])
def test_a_process_other_than_the_lead_ends_unfitted(train, reduction: str) -> None:
    model = PaDiM(**{**TINY, "reduction": reduction, "n_features": 8}).fit(train[:4], shards=Follower())
    assert not hasattr(model, "mean_") and model.stats_ is None
    if reduction == "pca":  # it still projects on the components the lead shares
        assert model.components_.shape == (448, 8)


def test_fit_takes_the_shards_by_keyword_only(train) -> None:
    with pytest.raises(TypeError):
        PaDiM(**TINY).fit(train[:2], FirstHalf())  # type: ignore[misc]
