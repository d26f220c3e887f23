"""ST-LPIPS: shift-tolerant LPIPS (AlexNet and VGG-16 trunks).

Reference: A. Ghildyal and F. Liu, "Shift-tolerant Perceptual Similarity Metric", ECCV 2022
(https://github.com/abhijay9/ShiftTolerant-LPIPS). This is an independent re-implementation of the
released ``shift_tolerant`` variant: an LPIPS metric (Zhang et al., CVPR 2018) whose trunk is made
anti-aliased the way the paper recommends -- every stride-2 step is replaced by a stride-1 op followed
by a BlurPool (reflect padding of 2 px, 3x3 binomial filter, stride 2), and the AlexNet stem conv runs
at stride 1 with the blur placed *before* its ReLU.

Inputs: two images ``(B, 3, H, W)`` in ``[0, 1]`` (sRGB) of the same size. Output: ``(B,)`` distances
(0 = identical), the spatially averaged sum of the five calibrated layer distances, i.e. what the
reference ``stlpips.LPIPS(net=..., variant="shift_tolerant")(x, y, normalize=True)`` returns.

``STLPIPS(net).state_dict()`` has exactly the keys and shapes of the released weight files
(``{alex,vgg}_shift_tolerant.pth``, saved with CUDA tensors: ``torch.load(..., map_location="cpu")``),
so they load with ``strict=True``. The model is returned in eval mode
with random trunk/head weights; load a weight file before use.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sxbench.backbones.pooling import MaxPool2d

__all__ = ["STLPIPS", "BlurPool2d"]

# Per-channel shift/scale that LPIPS applies to [-1, 1] inputs (ImageNet mean/std expressed in [-1, 1]).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class BlurPool2d(nn.Module):
    """Anti-aliased stride-2 downsampling: reflect pad 2 px per side, depthwise ``[1,2,1]^T [1,2,1] / 16``.

    The 2 px padding (not the usual 1 px) is the ST-LPIPS choice ("pad more"); output size is
    ``floor((n + 1) / 2) + 1`` for an input side ``n`` (which must be ``>= 3`` for reflect padding).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        k2 = torch.outer(k, k)
        self.register_buffer("filt", (k2 / k2.sum()).expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class _ScalingLayer(nn.Module):
    """``(x - shift) / scale`` per channel; buffers are part of the released state dict."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class _LinHead(nn.Module):
    """LPIPS calibration head: dropout + non-negative 1x1 conv to one channel (key ``model.1.weight``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _conv(cin: int, cout: int, k: int = 3, pad: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=pad), nn.ReLU(inplace=True)]


def _alex_slices() -> list[list[nn.Module]]:
    return [
        [nn.Conv2d(3, 64, 11, stride=1, padding=2), BlurPool2d(64), nn.ReLU(inplace=True)],
        [MaxPool2d(3, stride=1), BlurPool2d(64), *_conv(64, 192, 5, 2)],
        [MaxPool2d(3, stride=1), BlurPool2d(192), *_conv(192, 384)],
        _conv(384, 256),
        _conv(256, 256),
    ]


def _vgg_slices() -> list[list[nn.Module]]:
    def down(c: int) -> list[nn.Module]:
        return [MaxPool2d(2, stride=1), BlurPool2d(c)]

    return [
        [*_conv(3, 64), *_conv(64, 64)],
        [*down(64), *_conv(64, 128), *_conv(128, 128)],
        [*down(128), *_conv(128, 256), *_conv(256, 256), *_conv(256, 256)],
        [*down(256), *_conv(256, 512), *_conv(512, 512), *_conv(512, 512)],
        [*down(512), *_conv(512, 512), *_conv(512, 512), *_conv(512, 512)],
    ]


_TRUNKS = {
    "alex": (_alex_slices, (64, 192, 384, 256, 256)),
    "vgg": (_vgg_slices, (64, 128, 256, 512, 512)),
}


class STLPIPS(nn.Module):
    """Shift-tolerant LPIPS distance with an anti-aliased AlexNet (``"alex"``) or VGG-16 (``"vgg"``) trunk.

    Submodules mirror the released checkpoints: ``scaling_layer``, ``net.slice{1..5}`` (layers numbered as
    in one flat ``features`` sequence, so parameter-free layers leave gaps in the keys) and ``lin{0..4}``.

    Any ``H, W`` works (odd, non-square) down to a minimum side of 21 px for ``"alex"`` and 18 px for
    ``"vgg"``; below that a reflect pad in the last BlurPool fails. The result is symmetric in ``x, y``.

    Args:
        net: trunk, ``"alex"`` (default, the paper's main metric) or ``"vgg"``.
    """

    def __init__(self, net: Literal["alex", "vgg"] = "alex") -> None:
        super().__init__()
        if net not in _TRUNKS:
            raise ValueError(f"net must be one of {sorted(_TRUNKS)}, got {net!r}")
        make_slices, self.channels = _TRUNKS[net]
        self.net_type = net
        self.scaling_layer = _ScalingLayer()
        slices, i = {}, 0
        for n, layers in enumerate(make_slices(), start=1):
            seq = nn.Sequential()
            for layer in layers:
                seq.add_module(str(i), layer)
                i += 1
            slices[f"slice{n}"] = seq
        self.net = nn.ModuleDict(slices)
        for k, c in enumerate(self.channels):
            self.add_module(f"lin{k}", _LinHead(c))
        self.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five trunk activations for an already scaled input (output of ``scaling_layer``)."""
        feats = []
        for block in self.net.values():
            x = block(x)
            feats.append(x)
        return feats

    def normalized_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five trunk activations of ``x`` ``(B, 3, H, W)`` in ``[0, 1]``, each unit-normalised over channels:
        what ``compare`` takes, so an image's half of the distance can be computed once and reused."""
        feats = self.features(self.scaling_layer(x * 2 - 1))  # [0, 1] -> [-1, 1] -> LPIPS channel scaling
        return [f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for f in feats]

    def compare(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        """Distance ``(B,)`` between two images' ``normalized_features``."""
        dist = fx[0].new_zeros(fx[0].shape[0])
        for k, (a, b) in enumerate(zip(fx, fy)):
            dist = dist + getattr(self, f"lin{k}")((a - b) ** 2).mean((1, 2, 3))
        return dist

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance between ``x`` and ``y``, both ``(B, 3, H, W)`` in ``[0, 1]``; returns ``(B,)``."""
        if x.shape != y.shape:
            raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        feats = self.normalized_features(torch.cat([x, y]))  # one trunk pass over both images
        return self.compare(*zip(*(f.chunk(2) for f in feats)))
