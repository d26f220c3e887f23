"""Standard LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric",
CVPR 2018) on torchvision's ImageNet trunks, built without the lpips package downloading anything.

``lpips.LPIPS(pretrained=True, net=..., pnet_rand=True)`` builds the network with the v0.1 linear heads the
installed package ships (``lpips/weights/v0.1/{alex,vgg}.pth``) around a randomly initialised torchvision
trunk; the trunk's ImageNet weights are then read from torchvision's own checkpoint file
(``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``) in the weights folder. The result is the lpips
package's model, weight for weight, so distances are exactly what ``lpips.LPIPS(net=...)`` gives where
torchvision can download its weights.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sxbench.backbones.models import FeatureExtractor

__all__ = ["LPIPSExtractor", "build_lpips", "trunk_state_dict"]


def trunk_state_dict(model: nn.Module, checkpoint: dict[str, torch.Tensor],
                     source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The ``model.net`` state dict (lpips keys ``slice{k}.{i}.{param}``) taken from a torchvision classifier
    checkpoint (keys ``features.{i}.{param}``; the classifier is ignored). Raises ``ValueError`` naming the
    missing keys when ``checkpoint`` is not the expected architecture."""
    wanted = {name: "features." + name.split(".", 1)[1] for name in model.net.state_dict()}
    missing = sorted(k for k in wanted.values() if k not in checkpoint)
    if missing:
        raise ValueError(f"{source}: not a torchvision {model.pnet_type} checkpoint; missing {', '.join(missing[:4])}"
                         + (" …" if len(missing) > 4 else ""))
    return {name: checkpoint[key].float() for name, key in wanted.items()}


class LPIPSExtractor(FeatureExtractor):
    """LPIPS as a pairwise distance at the images' own resolution (upsampled so the shorter side is at least
    ``min_side``): ``distance(x, y) → (B,)``, or ``compare(forward(x), forward(y))``."""

    min_side = 32

    def __init__(self, net: str, model: nn.Module) -> None:
        super().__init__()
        self.backbone = f"lpips-{net}"
        self.model = model.eval()
        self.resolution = 0  # the images' own size

    def _fit(self, x: torch.Tensor) -> torch.Tensor:
        side = min(x.shape[-2:])
        if side >= self.min_side:
            return x
        size = tuple(math.ceil(s * self.min_side / side) for s in x.shape[-2:])  # the trunks need a few pixels
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS between ``x`` and ``y``, both ``(B, 3, H, W)`` in ``[0, 1]``; ``(B,)``, 0 for identical images."""
        if x.shape != y.shape:
            raise ValueError(f"LPIPS compares images of one size, got {tuple(x.shape)} and {tuple(y.shape)}")
        return self.model(self._fit(x), self._fit(y), normalize=True).view(-1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The image brought to the trunk's minimum size: the lpips package's model is run whole by ``compare``
        (its result is exactly the package's), so the per-image feature is the image itself."""
        return {"image": self._fit(images)}

    def compare(self, fx: dict[str, torch.Tensor], fy: dict[str, torch.Tensor]) -> torch.Tensor:
        x, y = fx["image"], fy["image"]
        if x.shape != y.shape:
            raise ValueError(f"LPIPS compares images of one size, got {tuple(x.shape)} and {tuple(y.shape)}")
        return self.model(x, y, normalize=True).view(-1)


def build_lpips(net: str, path: Path) -> LPIPSExtractor:
    """LPIPS v0.1 with ``net`` (``"alex"`` or ``"vgg"``) and the torchvision trunk checkpoint at ``path``."""
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's notice about lpips' `pretrained=` argument
        model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
    # no mmap: torchvision's 2017 files (vgg16-397923af.pth) are in the legacy, non-zip format
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model.net.load_state_dict(trunk_state_dict(model, checkpoint, str(path)), strict=True)
    return LPIPSExtractor(net, model)
