"""Expert-utilization metrics (group ``experts``), computed from a mixture method's stored routing.

Input: a long table with one row per (sample, layer, slot): columns ``style_id``, ``family``, ``level``,
``layer``, ``expert`` (int). Routing depends only on the style image, so every statistic is taken over
*distinct styles* (one routing per ``style_id``), not over samples.

Definitions (per layer, then averaged over layers):

* ``usage[l, e]``: fraction of styles whose top-k in layer ``l`` contains expert ``e`` (sums to k over e);
* ``expert_load_entropy``: entropy of ``usage[l] / k`` divided by ``log E`` (1 = perfectly even load);
* ``expert_dead_fraction``: fraction of (layer, expert) never chosen;
* ``expert_load_cv``: coefficient of variation (std / mean) of ``usage[l]``;
* ``expert_family_mi``: mutual information (bits) between a style's family and an expert chosen for it
  (each of the k slots an observation), divided by the family entropy (0 = routing ignores the family,
  1 = the family is determined by the experts);
* routing IoU: for two styles, |S_a ∩ S_b| / |S_a ∪ S_b| where S is the set of (layer, expert) chosen;
  averaged over pairs that are *similar* (same family, different style instance), *related* (same level,
  different family) and *dissimilar* (different level). The paper reports 33.18% similar vs 10.60%
  dissimilar.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
import pandas as pd

from sxbench.interfaces import Metric
from sxbench.records import MetricInfo

DIRECTIONS = {
    "expert_load_entropy": True,
    "expert_dead_fraction": False,
    "expert_load_cv": False,
    "expert_family_mi": True,
    "routing_iou_similar": True,
    "routing_iou_related": True,
    "routing_iou_dissimilar": False,
}
"""Which way is better for each statistic (even load, no dead experts, family-aware routing)."""


@dataclass(frozen=True)
class ExpertStats:
    """Expert-utilization statistics of one method."""

    values: dict[str, float]
    """Statistic name → value (names in ``DIRECTIONS``)."""
    usage_by_family: pd.DataFrame
    """Families × experts: mean over layers of the fraction of the family's styles choosing the expert."""
    n_styles: int
    num_experts: int


def _style_sets(routing: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, frozenset]]:
    styles = routing.drop_duplicates(["style_id", "layer", "slot"])
    sets = {sid: frozenset(zip(d.layer, d.expert)) for sid, d in styles.groupby("style_id")}
    return styles, sets


def expert_stats(routing: pd.DataFrame, num_experts: int) -> ExpertStats:
    """All statistics for one method's routing table (see the module docstring)."""
    styles, sets = _style_sets(routing)
    n_styles = styles.style_id.nunique()
    values: dict[str, float] = {}
    ent, dead, cv, mi = [], [], [], []
    for _, d in styles.groupby("layer"):
        usage = np.bincount(d.expert.to_numpy(), minlength=num_experts) / n_styles
        p = usage / max(usage.sum(), 1e-12)
        nz = p[p > 0]
        ent.append(float(-(nz * np.log(nz)).sum() / math.log(num_experts)))
        dead.append(float((usage == 0).mean()))
        cv.append(float(usage.std() / usage.mean()) if usage.mean() > 0 else math.nan)
        mi.append(_normalised_mi(d.family.to_numpy(), d.expert.to_numpy()))
    values["expert_load_entropy"] = float(np.mean(ent))
    values["expert_dead_fraction"] = float(np.mean(dead))
    values["expert_load_cv"] = float(np.nanmean(cv))
    values["expert_family_mi"] = float(np.nanmean(mi))
    info = styles.drop_duplicates("style_id").set_index("style_id")
    buckets: dict[str, list[float]] = {"similar": [], "related": [], "dissimilar": []}
    for a, b in itertools.combinations(sorted(sets), 2):
        iou = len(sets[a] & sets[b]) / max(len(sets[a] | sets[b]), 1)
        if info.family[a] == info.family[b]:
            buckets["similar"].append(iou)
        elif info.level[a] == info.level[b]:
            buckets["related"].append(iou)
        else:
            buckets["dissimilar"].append(iou)
    for name, vals in buckets.items():
        values[f"routing_iou_{name}"] = float(np.mean(vals)) if vals else math.nan
    per_family = (styles.groupby(["family", "layer"]).expert.value_counts().rename("n").reset_index())
    fam_styles = styles.drop_duplicates(["style_id"]).groupby("family").size()
    per_family["frac"] = per_family.n / per_family.family.map(fam_styles)
    n_layers = styles.layer.nunique()
    usage_by_family = (per_family.groupby(["family", "expert"]).frac.sum() / n_layers).unstack(fill_value=0.0)
    usage_by_family = usage_by_family.reindex(columns=range(num_experts), fill_value=0.0)
    return ExpertStats(values, usage_by_family, n_styles, num_experts)


def _normalised_mi(labels: np.ndarray, experts: np.ndarray) -> float:
    """I(label; expert) / H(label) from co-occurrence counts (bits cancel)."""
    if len(labels) == 0:
        return math.nan
    counts = pd.crosstab(labels, experts).to_numpy(dtype=float)
    joint = counts / counts.sum()
    pl, pe = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / (pl @ pe)[nz])).sum())
    h = float(-(pl[pl > 0] * np.log(pl[pl > 0])).sum())
    return mi / h if h > 0 else math.nan


DESCRIPTIONS = {
    "expert_load_entropy": "Entropy of the experts' load over distinct styles / log E, mean over layers (1 = even).",
    "expert_dead_fraction": "Fraction of (layer, expert) never in any distinct style's top-k.",
    "expert_load_cv": "Coefficient of variation of the experts' load over distinct styles, mean over layers.",
    "expert_family_mi": "Mutual information between a style's family and its chosen experts / family entropy.",
    "routing_iou_similar": "Mean IoU of the (layer, expert) sets of two styles of the same family.",
    "routing_iou_related": "Mean IoU of the (layer, expert) sets of two styles of the same level, other families.",
    "routing_iou_dissimilar": "Mean IoU of the (layer, expert) sets of two styles of different levels.",
}
RANGES = {"expert_load_cv": (0.0, math.inf)}


@dataclass(frozen=True)
class RoutingView:
    """What an expert metric sees: one method configuration's routing table (module docstring) and its expert
    count. ``stats`` is computed once per view and shared by every expert metric."""

    routing: pd.DataFrame
    num_experts: int

    @cached_property
    def stats(self) -> ExpertStats:
        return expert_stats(self.routing, self.num_experts)

    @property
    def n_styles(self) -> int:
        """Distinct styles: the ``n`` of every expert statistic."""
        return int(self.routing.style_id.nunique())


class ExpertMetric(Metric):
    """One expert-utilization statistic as a metric of scope ``experts``: ``compute(view) → float`` (``view`` a
    ``RoutingView``). Stored per method configuration (subset ``all``) with the set metrics."""

    info: ClassVar[MetricInfo]

    def compute(self, view: RoutingView) -> float:
        return view.stats.values[self.info.name]


def _expert_metric(name: str) -> type[ExpertMetric]:
    info = MetricInfo(name, DIRECTIONS[name], RANGES.get(name, (0.0, 1.0)), "experts", frozenset(),
                      description=DESCRIPTIONS[name], scope="experts")
    return type("".join(w.title() for w in name.split("_")), (ExpertMetric,), {"info": info, "__module__": __name__})


EXPERT_METRICS: tuple[type[ExpertMetric], ...] = tuple(_expert_metric(n) for n in DIRECTIONS)
"""Every expert statistic, in ``DIRECTIONS`` order; the evaluator computes all of them for each method that
stores routing (they need no weights and take milliseconds)."""
