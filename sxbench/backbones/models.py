"""Feature extractors on the weights module's backbones, and a per-run cache of their features.

Each extractor maps a batch of images ``(B, 3, H, W)`` in ``[0, 1]`` to a dict of per-image feature tensors
(first dimension ``B``), with its backbone's preprocessing inside and a fixed input resolution. Metrics
share one extractor instance per (backbone, device) and one ``FeatureCache`` per run, so content and style
references pass through each backbone once per run, however many methods and metrics use them.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sxbench import weights


class FeatureExtractor(nn.Module):
    """Base class: ``forward(images) → {name: (B, ...)}``; ``backbone`` is the weights-module name."""

    backbone: str = ""
    resolution: int = 224
    """Side of the square the images are resized to (stated in the report)."""
    weights_sha256: str | None = None

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
        last = max(int(w[4]) for w in wanted)
        for b, n in enumerate(VGG19_BLOCKS, 1):
            for c in range(1, n + 1):
                x = F.relu(self.convs[f"block{b}_conv{c}"](x))
                if f"relu{b}_{c}" in wanted:
                    out[f"relu{b}_{c}"] = x
            if b == last:
                break
            x = F.max_pool2d(x, 2)
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
    """The TF FID Inception graph (TorchScript): pool3 features ``pool3`` ``(B, 2048)``, float64-ready."""

    backbone = "inception"
    resolution = 299

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.module = module.eval()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.resize(images.clamp(0, 1), "bilinear")
        x = (x * 255.0 - 128.0) / 128.0
        return {"pool3": self.module(x).float()}


# ----------------------------------------------------------------------------------------- ST-LPIPS
class STLPIPSExtractor(FeatureExtractor):
    """Shift-tolerant LPIPS as a pairwise distance at the images' own resolution (at least ``min_side``):
    ``distance(x, y) → (B,)``."""

    min_side = 32

    def __init__(self, net: str, model: nn.Module) -> None:
        super().__init__()
        self.backbone = f"stlpips-{net}"
        self.model = model.eval()

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_side:  # the anti-aliased trunk needs a few pixels at its last stage
            self.resolution = self.min_side
            x, y = self.resize(x), self.resize(y)
        return self.model(x, y).view(-1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError("ST-LPIPS compares two images: use distance(x, y)")


class JudgeExtractor(FeatureExtractor):
    """A VLM judge as a pairwise rater: ``rate(outputs, styles) → (B,)`` (NaN where the answer did not parse)."""

    def __init__(self, judge, backbone: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.judge = judge
        self.model = judge.model  # registered, so device moves reach it

    def rate(self, outputs: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        self.judge.device = next(self.model.parameters()).device
        return self.judge.rate(outputs, styles)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError("the judge rates (output, style) pairs: use rate(outputs, styles)")


# ------------------------------------------------------------------------------------------ loading
_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str, str], FeatureExtractor] = {}


def load_extractor(name: str, device: str | torch.device = "cpu", root: Path | None = None) -> FeatureExtractor:
    """The extractor for backbone ``name`` (one instance per backbone, device and weights folder).

    Raises ``weights.WeightsMissingError`` with the fetch command when the weights are not there.
    """
    key = (name, str(device), str(weights.weights_dir(root)))
    with _LOCK:
        if key not in _LOADED:
            path = weights.require(name, root)
            ext = _build(name, path)
            ext.weights_sha256 = weights.status(name, root)["sha256"]
            _LOADED[key] = ext.to(device).eval().requires_grad_(False)
        return _LOADED[key]


def _build(name: str, path: Path) -> FeatureExtractor:
    from safetensors.torch import load_file

    if name == "vgg19":
        return VGG19().load_weights(load_file(str(path)))
    if name == "dinov2-s":
        from transformers import Dinov2Model

        from sxbench.backbones.dinov2_onnx import dinov2_small_config

        model = Dinov2Model(dinov2_small_config())
        model.load_state_dict(load_file(str(path)), strict=True)
        return DINOv2(model)
    if name == "inception":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            return InceptionFID(torch.jit.load(str(path), map_location="cpu"))
    if name in ("stlpips-alex", "stlpips-vgg"):
        from sxbench.backbones.stlpips import STLPIPS

        net = name.split("-")[1]
        model = STLPIPS(net)
        model.load_state_dict(load_file(str(path)), strict=True)
        return STLPIPSExtractor(net, model)
    if name in ("lpips-alex", "lpips-vgg"):
        from sxbench.backbones.lpips_net import build_lpips

        return build_lpips(name.split("-")[1], path)
    if name == "clip-vit-l-14":
        from sxbench.backbones.clip import CLIPImage

        return CLIPImage.from_folder(path.parent, name)
    if name == "csd-vit-l":
        from sxbench.backbones.clip import CSD

        return CSD(load_file(str(path)))
    if name == "dreamsim-ensemble":
        from sxbench.backbones.dreamsim import DreamSim

        return DreamSim.from_file(path)
    if name == "aesthetic-laion":
        from sxbench.backbones.clip import Aesthetic, AestheticMLP, CLIPImage

        clip_path = weights.require("clip-vit-l-14", path.parent.parent)
        head = AestheticMLP(load_file(str(path))["layers.0.weight"].shape[1])
        head.load_state_dict(load_file(str(path)), strict=True)
        return Aesthetic(CLIPImage.from_folder(clip_path.parent, "clip-vit-l-14"), head)
    if name == "qwen2.5-vl-7b":
        from sxbench.metrics.judge import QwenJudge

        return JudgeExtractor(QwenJudge.from_folder(path.parent), name)
    raise KeyError(f"no extractor for backbone {name!r}")


class FeatureCache:
    """Per-run memory of features by image key: references (``content:<id>``, ``style:<id>``) pass through a
    backbone once per run; outputs (``out:<sample key>``) are kept only for the last ``recent`` images, long
    enough for every metric on the same backbone to share them within a batch."""

    def __init__(self, recent: int = 256) -> None:
        self._mem: dict[tuple[str, str, int], dict[str, torch.Tensor]] = {}
        self._recent: OrderedDict[tuple[str, str, int], dict[str, torch.Tensor]] = OrderedDict()
        self.recent = recent

    def __len__(self) -> int:
        return len(self._mem) + len(self._recent)

    def _get(self, key: tuple[str, str, int]) -> dict[str, torch.Tensor] | None:
        return self._mem.get(key) if key in self._mem else self._recent.get(key)

    def _put(self, key: tuple[str, str, int], value: dict[str, torch.Tensor]) -> None:
        if key[1].startswith("out:"):
            self._recent[key] = value
            while len(self._recent) > self.recent:
                self._recent.popitem(last=False)
        else:
            self._mem[key] = value

    def features(self, extractor: FeatureExtractor, images: torch.Tensor,
                 keys: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        if keys is None:
            return extractor(images)
        tag = (extractor.backbone, extractor.resolution)
        rows: list[dict[str, torch.Tensor] | None] = [self._get((tag[0], k, tag[1])) for k in keys]
        todo = [i for i, r in enumerate(rows) if r is None]
        if todo:
            new = extractor(images[torch.tensor(todo)])
            for j, i in enumerate(todo):
                rows[i] = {n: v[j].detach() for n, v in new.items()}
                self._put((tag[0], keys[i], tag[1]), rows[i])
        return {n: torch.stack([r[n] for r in rows]) for n in rows[0]}
