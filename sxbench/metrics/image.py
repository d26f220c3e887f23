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


class StyleColorSWD(ImageMetric):
    info = MetricInfo(
        "style_color_swd", False, (0.0, INF), "style", frozenset({"style"}),
        description="Sliced Wasserstein distance between Lab colour distributions of output and style reference.",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        return Fn.color_swd(output, _need(style, "style", self.info.name))


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


class TargetColorSWD(ImageMetric):
    info = MetricInfo(
        "target_color_swd", False, (0.0, INF), "detail", frozenset({"target"}),
        description="Sliced Wasserstein distance of Lab colours to the target.",
    )

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        return Fn.color_swd(output, _need(target, "target", self.info.name))
