"""Per-image metrics on pretrained backbones (weights through ``sxbench.weights``; features through
``sxbench.backbones.models``).

Each metric's ``info.backbone`` names its backbone and the first 12 hex digits of the weights' sha256, so a
stored value always says which weights produced it. Creating a metric whose weights are missing raises
``sxbench.weights.WeightsMissingError`` with the command that fetches them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from sxbench.backbones.models import CONTENT_LAYER, GRAM_LAYERS
from sxbench.features import FeatureCache
from sxbench.interfaces import EvalContext, ImageMetric, Metric
from sxbench.metrics.image import INF, _need
from sxbench.records import MetricInfo
from sxbench.weights import load_extractor


def attach_backbone(metric: Metric, **info: Any) -> None:
    """Give a metric on a pretrained backbone (``metric.backbone_name``) its extractor, loaded from its context's
    device and weights folder, the run's feature cache (or one of its own), and an ``info.backbone`` naming the
    weights (``<backbone>@<sha256[:12]>``), with any other ``info`` fields replaced. Image and set metrics both use it."""
    ctx = metric.context
    metric.extractor = load_extractor(metric.backbone_name, ctx.device, Path(ctx.weights_dir) if ctx.weights_dir else None)
    metric.cache = ctx.cache if ctx.cache is not None else FeatureCache()
    sha = (metric.extractor.weights_sha256 or "unverified")[:12]
    metric.info = dataclasses.replace(type(metric).info, backbone=f"{metric.backbone_name}@{sha}", **info)


class BackboneMetric(ImageMetric):
    """A per-image metric on one backbone, built from an ``EvalContext`` (device, weights folder, feature cache).

    ``roles`` names the images that pass through the backbone (``output``, ``content``, ``style``) and ``fields``
    the features read from it: the evaluator computes them for a whole batch, once per image, before any metric
    scores it, and ``score(..., keys=...)`` then finds them in the run's ``FeatureCache``. Reference features are
    written to the run folder's feature files when ``persist_references`` (the pairwise LPIPS trunks are not:
    2.4 MB per image for 40 ms of compute)."""

    backbone_name: ClassVar[str]
    roles: ClassVar[tuple[str, ...]] = ("output",)
    fields: ClassVar[tuple[str, ...]] = ()
    persist_references: ClassVar[bool] = True

    def __init__(self, context: EvalContext | None = None) -> None:
        super().__init__(context)
        attach_backbone(self)

    def feats(self, images: torch.Tensor, keys: Sequence[str] | None) -> dict[str, torch.Tensor]:
        dev = next(self.extractor.parameters()).device
        return {k: v.float() for k, v in self.cache.features(self.extractor, images.to(dev), keys,
                                                             fields=self.fields).items()}

    @staticmethod
    def key(keys: dict[str, Sequence[str]] | None, which: str) -> Sequence[str] | None:
        return None if keys is None else keys.get(which)

    def pair(self, output: torch.Tensor, reference: torch.Tensor | None, which: str,
             keys: dict[str, Sequence[str]] | None, field: str | None = None) -> tuple[Any, Any]:
        """Features of the outputs and of the ``which`` (content/style) references, both through the cache;
        with ``field``, that one feature of each."""
        ref = self.feats(_need(reference, which, self.info.name), self.key(keys, which))
        out = self.feats(output, self.key(keys, "output"))
        return (out, ref) if field is None else (out[field], ref[field])


class DinoContent(BackboneMetric):
    backbone_name = "dinov2-s"
    roles, fields = ("output", "content"), ("cls",)
    info = MetricInfo(
        "dino_content", True, (-100.0, 100.0), "fidelity", frozenset({"content"}), backbone="dinov2-s",
        description="Cosine × 100 of DINOv2-S CLS tokens (224², ImageNet normalisation), output vs content: "
                    "the paper's DINO score on the registry backbone.",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        out, ref = self.pair(output, content, "content", keys, field="cls")
        return 100.0 * F.cosine_similarity(out, ref, dim=-1)


class DinoStructure(BackboneMetric):
    backbone_name = "dinov2-s"
    roles, fields = ("output", "content"), ("keys",)
    info = MetricInfo(
        "dino_structure", False, (0.0, 2.0), "fidelity", frozenset({"content"}), backbone="dinov2-s",
        description="Distance of the cosine self-similarity matrices of last-block DINOv2-S keys, output vs content "
                    "(Splicing-ViT/StyleID structure; Frobenius norm / N, 224²).",
    )

    @staticmethod
    def _ssm(keys: torch.Tensor) -> torch.Tensor:
        k = F.normalize(keys, dim=-1)
        return k @ k.transpose(1, 2)

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        out, ref = (self._ssm(k) for k in self.pair(output, content, "content", keys, field="keys"))
        return torch.linalg.matrix_norm(out - ref) / out.shape[-1]


class VGGContentLoss(BackboneMetric):
    backbone_name = "vgg19"
    roles, fields = ("output", "content"), (CONTENT_LAYER,)
    info = MetricInfo(
        "vgg_content_loss", False, (0.0, INF), "fidelity", frozenset({"content"}), backbone="vgg19",
        description="Gatys content loss: mean squared difference of VGG-19 relu4_2 features, output vs content "
                    "(128², Caffe preprocessing), /1000.",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        out, ref = self.pair(output, content, "content", keys, field=CONTENT_LAYER)
        return (out - ref).pow(2).flatten(1).mean(1) / 1000.0


class VGGGramStyle(BackboneMetric):
    backbone_name = "vgg19"
    roles, fields = ("output", "style"), tuple(f"gram_{n}" for n in GRAM_LAYERS)
    info = MetricInfo(
        "vgg_gram_style", False, (0.0, INF), "style", frozenset({"style"}), backbone="vgg19",
        description="Gatys style loss: sum over relu1_1…relu5_1 of the mean squared difference of VGG-19 Gram "
                    "matrices (F Fᵀ / CHW), output vs style reference (128², Caffe scale), /1e5.",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        out, ref = self.pair(output, style, "style", keys)
        total = sum((out[f"gram_{n}"] - ref[f"gram_{n}"]).pow(2).flatten(1).mean(1) for n in GRAM_LAYERS)
        return total / 1e5


class ContentDistance(BackboneMetric):
    """A metric whose extractor is a pairwise distance (the LPIPS family), output vs content: per-image features
    from ``forward``, the distance from ``compare``."""

    roles = ("output", "content")
    persist_references = False

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        out, ref = self.pair(output, content, "content", keys)
        return self.extractor.compare(out, ref).float()


class STLPIPSContent(ContentDistance):
    backbone_name = "stlpips-alex"
    info = MetricInfo(
        "stlpips_content", False, (0.0, INF), "fidelity", frozenset({"content"}), backbone="stlpips-alex",
        description="Shift-tolerant LPIPS (AlexNet, vST0.0) between output and content at the protocol resolution: "
                    "perceptual distance that ignores small shifts.",
    )


class STLPIPSContentVGG(STLPIPSContent):
    backbone_name = "stlpips-vgg"
    info = MetricInfo(
        "stlpips_content_vgg", False, (0.0, INF), "fidelity", frozenset({"content"}), backbone="stlpips-vgg",
        description="Shift-tolerant LPIPS (VGG-16, vST0.0) between output and content at the protocol resolution.",
    )


class CLIPContent(BackboneMetric):
    backbone_name = "clip-vit-l-14"
    roles, fields = ("output", "content"), ("embed",)
    info = MetricInfo(
        "clip_content", True, (-100.0, 100.0), "fidelity", frozenset({"content"}), backbone="clip-vit-l-14",
        description="CLIP ViT-L/14 image-embedding cosine × 100, output vs content (the paper's CLIP score).",
    )
    which: ClassVar[str] = "content"

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        ref_img = content if self.which == "content" else style
        out, ref = self.pair(output, ref_img, self.which, keys, field="embed")
        return 100.0 * (out * ref).sum(-1)


class CLIPStyle(CLIPContent):
    roles = ("output", "style")
    info = MetricInfo(
        "clip_style", True, (-100.0, 100.0), "style", frozenset({"style"}), backbone="clip-vit-l-14",
        description="CLIP ViT-L/14 image-embedding cosine × 100, output vs style reference.",
    )
    which = "style"


class CSDStyle(BackboneMetric):
    backbone_name = "csd-vit-l"
    roles, fields = ("output", "style"), ("style",)
    info = MetricInfo(
        "csd_style", True, (-100.0, 100.0), "style", frozenset({"style"}), backbone="csd-vit-l",
        description="CSD style-descriptor cosine × 100, output vs style reference (the paper's CSD score).",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        out, ref = self.pair(output, style, "style", keys, field="style")
        return 100.0 * (out * ref).sum(-1)


class AestheticScore(BackboneMetric):
    backbone_name = "aesthetic-laion"
    roles, fields = ("output",), ("score",)
    info = MetricInfo(
        "aesthetic", True, (-INF, INF), "quality", frozenset(), backbone="aesthetic-laion",
        description="LAION improved aesthetic predictor on CLIP ViT-L/14 (about 1–10; the paper's Aesthetic).",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        return self.feats(output, self.key(keys, "output"))["score"]


class VLMSemantic(BackboneMetric):
    backbone_name = "qwen2.5-vl-7b"
    roles = ()  # a pairwise rater: no per-image features to share
    info = MetricInfo(
        "vlm_semantic", True, (0.0, 100.0), "style", frozenset({"style"}), backbone="qwen2.5-vl-7b",
        version="1",  # = sxbench.metrics.judge.PROMPT_VERSION
        description="Qwen2.5-VL judge, 0–100: does the output take on the reference's texture, material and strokes, "
                    "not only its colours (the paper's Qwen Semantic Score; prompt and parsing versioned in "
                    "sxbench.metrics.judge). Unparseable answers are dropped and logged.",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        import logging

        ref = _need(style, "style", self.info.name)
        dev = next(self.extractor.parameters()).device
        values = self.extractor.rate(output.to(dev), ref.to(dev)).float().cpu()
        for v, answer in zip(values.tolist(), self.extractor.judge.last_answers):
            if v != v:  # NaN: say what the judge answered
                logging.getLogger(__name__).warning("vlm_semantic: unparseable answer %r", answer[:200])
        return values
