"""Shared fixtures: a tiny random-weight backbone configuration, a miniature real-texture set, empty weight caches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from padim.backbone import build_backbone
from padim.errors import PadimError
from padim.evaluation.synthetic import make_inspection_set

torch.set_num_threads(2)  # the LU pitfall this project avoids shows with more than one thread

def error(fn, *args, **kwargs) -> str:
    """The message of the PadimError fn raises; also checks it is one line."""
    with pytest.raises(PadimError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# A small, fast configuration: random (explicitly requested) ResNet18 weights, 64x64 inputs, 32 features.
TINY = dict(backbone="resnet18", weights="random", image_size=64, crop_size=None, n_features=32,
            batch_size=8, seed=0, workers=1)


@pytest.fixture(scope="session")
def texture_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A miniature MVTec-like category built from scikit-image's real brick photo."""
    root = tmp_path_factory.mktemp("textures")
    return make_inspection_set(root, "brick", n_train=12, n_test_good=4, n_test_defect=8, size=96, seed=1)


@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the torch hub and Hugging Face caches at empty folders (the HF path is read at import time)."""
    import huggingface_hub.constants

    torch_home, hf_home = tmp_path / "torch_home", tmp_path / "hf_home"
    torch_home.mkdir()
    hf_home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    assert Path(torch.hub.get_dir()) == torch_home / "hub"
    return tmp_path


# A ResNet18 with seeded random weights, its state dict and a probe batch (the backbone tests).
@pytest.fixture(scope="module")
def r18():
    return build_backbone("resnet18", weights="random", seed=7)


@pytest.fixture(scope="module")
def r18_state(r18) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in r18.extractor.model.state_dict().items()}


@pytest.fixture(scope="module")
def probe_input() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
