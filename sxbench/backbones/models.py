"""Feature extractors: the architectures behind the weights module's backbones.

Each extractor maps a batch of images ``(B, 3, H, W)`` in ``[0, 1]`` to a dict of per-image feature tensors
(first dimension ``B``), with its backbone's preprocessing inside and a fixed input resolution. They are built
and loaded by ``sxbench.weights.load_extractor`` (one instance per backbone, device and weights folder); this
package never imports ``sxbench.weights``, so the dependency runs one way. Features are shared between metrics
through ``sxbench.features.FeatureCache``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sxbench.backbones.inception import from_torchscript
from sxbench.backbones.pooling import max_pool2d


class FeatureExtractor(nn.Module):
    """Base class: ``forward(images) → {name: (B, ...)}``; ``backbone`` is the weights-module name."""

    backbone: str = ""
    resolution: int = 224
    """Side of the square the images are resized to (stated in the report)."""
    weights_sha256: str | None = None
    feature_version: str = "1"
    """Bumped when ``forward``'s preprocessing or outputs change for the same weights (it names the run folder's
    feature files, ``sxbench.features.tag``)."""

    def resize(self, images: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        if images.shape[-1] == self.resolution and images.shape[-2] == self.resolution:
            return images
        return F.interpolate(images, size=(self.resolution, self.resolution), mode=mode, align_corners=False,
                             antialias=mode in ("bilinear", "bicubic"))


# ------------------------------------------------------------------------------------------ VGG-19
VGG19_BLOCKS = (2, 2, 4, 4, 4)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
GRAM_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYER = "relu4_2"
STRUCTURE_LAYER = "relu3_1"
"""The layer of StyleID's CFSD (patch self-similarity)."""


class VGG19(FeatureExtractor):
    """The VGG-19 convolution stack (Caffe preprocessing), giving Gatys et al.'s style Grams and content layer.

    Features: ``gram_<layer>`` ``(B, C, C)`` for ``GRAM_LAYERS`` (``F Fᵀ / (C·H·W)``), ``relu4_2`` ``(B, 512, h, w)``,
    ``relu3_1`` ``(B, 256, 2h, 2w)`` (``h = w = resolution / 8``).
    """

    backbone = "vgg19"

    def __init__(self, resolution: int = 128) -> None:
        super().__init__()
        self.resolution = resolution
        convs, cin = {}, 3
        for b, n in enumerate(VGG19_BLOCKS, 1):
            cout = min(64 * 2 ** (b - 1), 512)
            for c in range(1, n + 1):
                convs[f"block{b}_conv{c}"] = nn.Conv2d(cin, cout, 3, padding=1)
                cin = cout
        self.convs = nn.ModuleDict(convs)
        self.register_buffer("mean", torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1), persistent=False)

    def load_weights(self, state: dict[str, torch.Tensor]) -> "VGG19":
        self.convs.load_state_dict(state, strict=True)
        return self

    def layers(self, images: torch.Tensor, wanted: Sequence[str], *, resize: bool = True) -> dict[str, torch.Tensor]:
        """The ``relu{b}_{c}`` activations named in ``wanted`` (at ``resolution``, or the input's own size
        with ``resize=False``, as the stylization methods use it)."""
        x = (self.resize(images) if resize else images).flip(1) * 255.0 - self.mean
        out: dict[str, torch.Tensor] = {}
        for b, n in enumerate(VGG19_BLOCKS, 1):
            for c in range(1, n + 1):
                x = F.relu(self.convs[f"block{b}_conv{c}"](x))
                if f"relu{b}_{c}" in wanted:
                    out[f"relu{b}_{c}"] = x
                    if len(out) == len(set(wanted)):  # nothing deeper is needed (relu5_1: 3 of 16 convs saved)
                        return out
            x = max_pool2d(x, 2)  # F.max_pool2d's values, faster
        return out

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.layers(images, (*GRAM_LAYERS, CONTENT_LAYER))
        out = {CONTENT_LAYER: feats[CONTENT_LAYER], STRUCTURE_LAYER: feats[STRUCTURE_LAYER]}
        for name in GRAM_LAYERS:
            f = feats[name].flatten(2)
            out[f"gram_{name}"] = f @ f.transpose(1, 2) / (f.shape[1] * f.shape[2])
        return out


# ---------------------------------------------------------------------------------------- DINOv2-S
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DINOv2(FeatureExtractor):
    """A transformers ``Dinov2Model``: the CLS token of the last layer and the last layer's attention keys.

    Features: ``cls`` ``(B, D)`` (after the final LayerNorm), ``keys`` ``(B, N, D)`` patch keys of the last
    block (Splicing-ViT/StyleID's structure descriptor).
    """

    backbone = "dinov2-s"

    def __init__(self, model: nn.Module, resolution: int = 224) -> None:
        super().__init__()
        self.model = model.eval()
        self.resolution = resolution
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        k_proj = self.model.encoder.layer[-1].attention.k_proj
        handle = k_proj.register_forward_hook(lambda _m, _i, out: captured.__setitem__("keys", out))
        try:
            out = self.model(pixel_values=(self.resize(images, "bicubic") - self.mean) / self.std)
        finally:
            handle.remove()
        return {"cls": out.pooler_output, "keys": captured["keys"][:, 1:]}


# -------------------------------------------------------------------------------------- Inception
class InceptionFID(FeatureExtractor):
    """The TF FID Inception graph (TorchScript): pool3 features ``pool3`` ``(B, 2048)``, float64-ready.

    The graph runs as its eager twin (``sxbench.backbones.inception``: the same features bit for bit, faster
    pooling) when the module is the real one.
    """

    backbone = "inception"
    resolution = 299

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.module = from_torchscript(module).eval()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.resize(images.clamp(0, 1), "bilinear")
        x = (x * 255.0 - 128.0) / 128.0
        return {"pool3": self.module(x).float()}


# ----------------------------------------------------------------------------------------- ST-LPIPS
class STLPIPSExtractor(FeatureExtractor):
    """Shift-tolerant LPIPS, a pairwise distance, split in two: ``forward(images)`` gives each image's unit-normalised
    trunk activations (``f0`` … ``f4``) at the images' own resolution (at least ``min_side``), ``compare`` the
    distance ``(B,)`` between two such feature sets; ``distance(x, y)`` does both."""

    min_side = 32

    def __init__(self, net: str, model: nn.Module) -> None:
        super().__init__()
        self.backbone = f"stlpips-{net}"
        self.model = model.eval()
        self.resolution = 0  # the images' own size

    def _fit(self, images: torch.Tensor) -> torch.Tensor:
        if min(images.shape[-2:]) >= self.min_side:
            return images
        return F.interpolate(images, size=(self.min_side, self.min_side), mode="bilinear", align_corners=False,
                             antialias=True)  # the anti-aliased trunk needs a few pixels at its last stage

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f"f{k}": f for k, f in enumerate(self.model.normalized_features(self._fit(images)))}

    def compare(self, fx: dict[str, torch.Tensor], fy: dict[str, torch.Tensor]) -> torch.Tensor:
        n = len(self.model.channels)
        return self.model.compare([fx[f"f{k}"] for k in range(n)], [fy[f"f{k}"] for k in range(n)])

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(self._fit(x), self._fit(y)).view(-1)


class JudgeExtractor(FeatureExtractor):
    """A VLM judge as a rater: ``rate(outputs, contents=, styles=) → (B,)`` (NaN where the answer did not parse)."""

    def __init__(self, judge, backbone: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.judge = judge
        self.model = judge.model  # registered, so device moves reach it

    def rate(self, outputs: torch.Tensor, *, contents: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        self.judge.device = next(self.model.parameters()).device
        return self.judge.rate(outputs, contents=contents, styles=styles)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError("the judge rates (content, style, output) triples: use rate(outputs, contents=, "
                                  "styles=)")
