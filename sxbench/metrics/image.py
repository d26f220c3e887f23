"""Weight-free per-image metrics. The maths lives in ``sxbench.metrics.functional``."""

from __future__ import annotations

import math

import torch

from sxbench.interfaces import ImageMetric
from sxbench.metrics import functional as Fn
from sxbench.records import MetricInfo

INF = math.inf


def _need(x: torch.Tensor | None, what: str, metric: str) -> torch.Tensor:
    if x is None:
        raise ValueError(f"metric {metric!r} needs the {what} image; pass {what}=...")
    return x


class ContentSSIM(ImageMetric):
    info = MetricInfo(
        "content_ssim", True, (-1.0, 1.0), "fidelity", frozenset({"content"}),
        description="SSIM (11-px Gaussian window) between output and content, RGB.",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        return Fn.ssim(output, _need(content, "content", self.info.name))


class ContentEdgeF1(ImageMetric):
    info = MetricInfo(
        "content_edge_f1", True, (0.0, 1.0), "fidelity", frozenset({"content"}),
        description="F1 of thin Sobel edges of output vs content, 1-px tolerance: is the structure kept?",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        ref = _need(content, "content", self.info.name)
        return Fn.edge_f1(Fn.edge_map(output), Fn.edge_map(ref))


class _ColorSWD(ImageMetric):
    """Lab colour SWD to a reference (``reference``: ``style`` or ``target``). With ``keys``, each reference's
    quantiles (``functional.color_quantiles``) are computed once and kept: they are the same for every method."""

    reference: str

    def __init__(self, context=None) -> None:
        super().__init__(context)
        self._quantiles: dict[str, torch.Tensor] = {}

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        ref = _need(style if self.reference == "style" else target, self.reference, self.info.name)
        ids = None if keys is None else keys.get(self.reference)
        if ids is None:
            return Fn.color_swd(output, ref)
        todo = [i for i, k in enumerate(ids) if k not in self._quantiles]
        if todo:
            for i, q in zip(todo, Fn.color_quantiles(ref[torch.tensor(todo)])):
                self._quantiles[ids[i]] = q
        qy = torch.stack([self._quantiles[k] for k in ids])
        return (Fn.color_quantiles(output) - qy).abs().mean((1, 2)).float()


class StyleColorSWD(_ColorSWD):
    info = MetricInfo(
        "style_color_swd", False, (0.0, INF), "style", frozenset({"style"}),
        description="Sliced Wasserstein distance between Lab colour distributions of output and style reference.",
    )
    reference = "style"


class StyleGram(ImageMetric):
    info = MetricInfo(
        "style_gram", False, (0.0, INF), "style", frozenset({"style"}),
        description="Gram-matrix distance of a fixed 3-scale filter bank (Lab tone, oriented derivatives, LoG).",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        return Fn.gram_distance(output, _need(style, "style", self.info.name))


class TargetPSNR(ImageMetric):
    info = MetricInfo(
        "target_psnr", True, (0.0, 100.0), "detail", frozenset({"target"}),
        description="PSNR (dB) of output against the ground-truth stylized target.",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        return Fn.psnr(output, _need(target, "target", self.info.name))


class TargetSSIM(ImageMetric):
    info = MetricInfo(
        "target_ssim", True, (-1.0, 1.0), "detail", frozenset({"target"}),
        description="SSIM of output against the ground-truth stylized target.",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        return Fn.ssim(output, _need(target, "target", self.info.name))


class TargetDetail(ImageMetric):
    info = MetricInfo(
        "target_detail", False, (0.0, INF), "detail", frozenset({"target"}),
        description="Distance (log10 decades) of high-frequency radial power spectra to the target: material detail.",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        return Fn.high_frequency_distance(output, _need(target, "target", self.info.name))


class TargetColorSWD(_ColorSWD):
    info = MetricInfo(
        "target_color_swd", False, (0.0, INF), "detail", frozenset({"target"}),
        description="Sliced Wasserstein distance of Lab colours to the target.",
    )
    reference = "target"
