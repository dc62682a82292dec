"""Where a backbone's weights come from: the offline lookup, and checkpoint files read and mapped safely."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from backbone_helpers import assert_same_taps, sha256_of, taps
from padim.backbone import build_backbone
from padim.errors import PadimError


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


@pytest.mark.parametrize("prefix, expected", [("", "layer2.0.conv1.weight"), ("foo_", "do not fit")],
                         ids=["mapped by name", "mapped by position"])
def test_a_tensor_of_the_wrong_shape_is_refused(tmp_path: Path, r18_state, prefix: str, expected: str) -> None:
    state = {f"{prefix}{k}": v for k, v in r18_state.items()}  # a prefix makes the names differ from timm's
    state[f"{prefix}layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    path = tmp_path / "bad_shape.pth"
    torch.save(state, path)
    with pytest.raises(PadimError, match=expected) as err:
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
