"""The torch-fast rewrites of a tapped network for one input size: batch norm folded into the convolution
before it, and the dynamic "same" padding of the tf_ EfficientNets made static. Taps are left as they are,
so the rewritten network returns the same maps as the original (padim.engine checks it does).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from padim.backbone import FeatureExtractor

if TYPE_CHECKING:
    from padim.engine import TapEmbedding


def optimised(module: TapEmbedding, size: tuple[int, int]) -> TapEmbedding:
    """A copy of the network for inference at one input size: batch norm folded, static 'same' padding."""
    fast = copy.deepcopy(module).cpu().eval()
    model = fast.extractor.model
    taps = set(fast.extractor.layers)
    convs, pads = _trace_pairs(fast, size)
    names = {m: n for n, m in model.named_modules()}
    for bn, conv in convs.items():
        if names[bn] in taps or names[conv] in taps:
            continue
        _fold(conv, bn)
        _replace(model, names[bn], _after_norm(bn))
    for conv, pad in pads.items():
        if names[conv] not in taps:
            _replace(model, names[conv], StaticPadConv(conv, pad))
    fast.extractor = FeatureExtractor(model, fast.extractor.layers)
    return fast


def _trace_pairs(module: TapEmbedding, size: tuple[int, int]) -> tuple[dict, dict]:
    """From one probe pass: the convolution feeding each batch norm, and each dynamic-padding conv's pads."""
    produced: dict[int, nn.Module] = {}
    pairs: dict[nn.Module, nn.Module] = {}
    pads: dict[nn.Module, tuple[int, int, int, int]] = {}

    def after_conv(conv: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        produced[id(output)] = conv
        if type(conv).__name__ == "Conv2dSame":
            pads[conv] = same_padding(tuple(inputs[0].shape[-2:]), conv)

    def before_norm(bn: nn.Module, inputs: Any) -> None:
        conv = produced.get(id(inputs[0]))
        if conv is not None and conv.out_channels == bn.num_features:
            pairs[bn] = conv

    handles = []
    for m in module.extractor.model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(after_conv))
        elif isinstance(m, nn.BatchNorm2d):
            handles.append(m.register_forward_pre_hook(before_norm))
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, *size))
    finally:
        for h in handles:
            h.remove()
    return pairs, pads


def same_padding(size: tuple[int, int], conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """TensorFlow 'SAME' padding (left, right, top, bottom) of a convolution for an input size."""
    out = []
    for n, k, s, d in zip(size, conv.kernel_size, conv.stride, conv.dilation):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        out.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = out
    return left, right, top, bottom


class StaticPadConv(nn.Module):
    """A convolution with fixed zero padding computed once for the input size (no per-call shape logic).

    Parameters
    ----------
    conv : nn.Conv2d
        The convolution (its own padding is not used).
    pad : (int, int, int, int)
        (left, right, top, bottom) zero padding (same_padding).

    Attributes
    ----------
    conv, pad
        As given.
    """

    def __init__(self, conv: nn.Conv2d, pad: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.conv = conv
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return F.conv2d(F.pad(x, self.pad), c.weight, c.bias, c.stride, 0, c.dilation, c.groups)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode batch norm into the convolution before it (w' = w g / s, b' = (b - mu) g / s + beta)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias.detach() if bn.affine else 0) - bn.running_mean * scale
    with torch.no_grad():
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        bias = shift if conv.bias is None else conv.bias * scale + shift
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)


def _after_norm(bn: nn.Module) -> nn.Module:
    """What remains of a folded batch norm: timm's BatchNormAct2d keeps its dropout and activation."""
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
    parts = [m for m in (drop, act) if m is not None and not isinstance(m, nn.Identity)]
    return nn.Sequential(*parts) if parts else nn.Identity()


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` at the dotted submodule path `name`."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)
