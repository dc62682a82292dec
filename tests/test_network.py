"""The pure torch network: its buffers, and the channels it keeps."""

from __future__ import annotations

import pytest
import torch

from padim import PadimError
from padim.backbone import build_backbone
from padim.network import PadimNet, draw_channels


@pytest.fixture(scope="module")
def r18():
    return build_backbone("resnet18", weights="random", seed=0)


def test_rd_draw_pca_and_all_channels(r18) -> None:
    channels, components = draw_channels(r18, None, "random", seed=0)
    assert channels.numel() == 100 and components is None  # resnet18's Rd default (paper)
    assert torch.equal(draw_channels(r18, "all", "random", seed=0)[0], torch.arange(448))
    channels, components = draw_channels(r18, 12, "pca", seed=0)
    assert torch.equal(channels, torch.arange(448)) and components == 12
    with pytest.raises(PadimError, match="reduction='pca' needs n_features between 1 and 448"):
        draw_channels(r18, 449, "pca", seed=0)


def test_the_fitted_state_is_in_the_state_dict(r18) -> None:
    channels = draw_channels(r18, 32, "random", seed=0)[0]
    net = PadimNet(r18, channels, sigma=4.0, size=(64, 64))
    net.set_gaussians(torch.zeros(256, 32, dtype=torch.float64), [torch.zeros(256, 32, 32)])
    saved = {k for k in net.state_dict() if not k.startswith("features.")}
    assert saved == {"channel_indices", "mean", "projection", "factor_0"}  # derived buffers are not saved
    assert torch.equal(net.channel_indices, channels) and net.grid == (16, 16)
