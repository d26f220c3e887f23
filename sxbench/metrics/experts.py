"""Expert-utilization metrics (group ``experts``), computed from a mixture method's stored routing, each with its
chance level.

Input: a long table with one row per (sample, layer, slot): columns ``style_id``, ``family``, ``level``,
``layer``, ``expert`` (int in ``[0, E)``). Routing depends only on the style image, so every statistic is taken
over *distinct styles* (one routing per ``style_id``, its first stored sample), not over samples. ``S``: distinct
styles, ``L``: layers, ``E``: experts, ``k``: experts a style takes in a layer (its top-k).

Statistics (``DIRECTIONS``):

* ``usage[l, e]``: fraction of styles whose top-k in layer ``l`` contains expert ``e`` (sums to k over e);
* ``expert_load_entropy``: entropy of ``usage[l] / k`` divided by ``log E``, mean over layers (1 = perfectly even);
* ``expert_dead_fraction``: fraction of (layer, expert) never chosen;
* ``expert_load_cv``: coefficient of variation (population std / mean) of ``usage[l]``, mean over layers;
* ``expert_family_mi``: plug-in mutual information between a style's family and an expert chosen for it (each
  of the k slots an observation) in one layer, divided by the family entropy of those observations (0 = routing
  ignores the family, 1 = the family is determined by the experts), mean over layers. The plug-in estimate is
  biased upwards (with 56 styles in 20 families, uniformly random top-2 routing over 16 experts gives about
  0.38); ``expert_family_mi_minus_chance`` is the bias-corrected value (below);
* routing IoU, *pooled over layers*: for two styles, ``|S_a ∩ S_b| / |S_a ∪ S_b|`` where ``S`` is the set of
  (layer, expert) pairs the style chose in all layers together (not an IoU per layer averaged over layers; the
  two differ: uniformly random top-2 of 16 gives 0.067 pooled, 0.086 per layer). Averaged over the pairs of
  distinct styles that are *similar* (same family), *related* (same level, different family) and *dissimilar*
  (different level); a missing family or level never matches. The paper reports 33.18% similar vs 10.60%
  dissimilar.

Chance levels. Each statistic ``X`` comes with four more values, each stored as its own metric:

* ``X_chance``: the mean of ``X`` over ``R`` replicates (``CHANCE_REPLICATES``, fixed seed ``CHANCE_SEED``) of the
  statistic's null (``NULLS``, described in ``NULL_DESCRIPTIONS``):

  - ``labels``: the observed routings with the styles' (family, level) labels permuted across styles. It keeps
    everything about the routing (collapse, uneven load, which styles share experts) and breaks only its link to
    the labels. Used for the label-dependent statistics: the three routing IoUs (whose chance is then, in
    expectation, the mean IoU over all pairs of styles) and the family MI (``X − chance`` is the
    shuffle-subtracted MI, the bias-corrected value);
  - ``active``: random routing in which each layer keeps its observed active experts (chosen by at least one
    style there) and each style draws its k experts in that layer uniformly among them. Used for the load
    entropy and CV: ``X − chance`` is how uneven the load over the experts in use is beyond what sampling ``S``
    styles gives (dead experts count in both, and have their own statistic);
  - ``uniform``: random routing over all ``E`` experts. Used for the dead fraction, which under ``active`` is
    the observed one by construction (up to an active expert a draw leaves unchosen): ``X − chance`` is the fraction of dead experts beyond what ``S`` styles
    leave unchosen by chance (``(1 − k/E)^S`` in expectation: 0.06% for 56 styles, top-2 of 16).

* ``X_minus_chance``: ``X − X_chance``;
* ``X_minus_chance_lo`` / ``X_minus_chance_hi``: a 95% interval for it from the spread of the null replicates,
  ``[X − q97.5, X − q2.5]`` with ``q`` the null's percentiles. It covers 0 exactly when a two-sided 5%
  randomisation test of ``X`` against the null does not reject (under the null the observed routing is one more
  draw from it, so the interval covers 0 for about 95% of such routings). It is conditional on the benchmark's
  styles: it says how far from chance this routing of these styles is, not how ``X`` would vary with another
  sample of styles. A bootstrap over styles (or families) was not used: a style drawn twice pairs with its own
  copy (IoU 1, counted as similar), and every bootstrap sample would need null replicates of its own.

Cost: vectorised over replicates, with no BLAS (its threads crawl on a busy machine): about 0.3 s of one CPU core
for the three nulls of one method of 56 styles × 20 layers × 16 experts with ``R = 200`` (0.5 s at 40 layers;
linear in layers and replicates, quadratic in styles).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, Literal

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
"""Which way is better for each statistic (even load, no dead experts, family-aware routing). Its chance-level
metrics (``CHANCE_PARTS``) take the same direction."""

Null = Literal["labels", "active", "uniform"]

NULLS: dict[str, Null] = {
    "expert_load_entropy": "active",
    "expert_dead_fraction": "uniform",
    "expert_load_cv": "active",
    "expert_family_mi": "labels",
    "routing_iou_similar": "labels",
    "routing_iou_related": "labels",
    "routing_iou_dissimilar": "labels",
}
"""The null each statistic's chance level is taken under (module docstring: why)."""

NULL_DESCRIPTIONS: dict[Null, str] = {
    "labels": "the observed routings with the styles' family and level labels permuted across styles",
    "active": "random routing: per layer, each style draws its k experts uniformly among the experts that layer "
              "uses",
    "uniform": "random routing: per layer, each style draws its k experts uniformly among all E experts",
}
"""One phrase per null, for descriptions and the report."""

CHANCE_PARTS = ("chance", "minus_chance", "minus_chance_lo", "minus_chance_hi")
"""Suffixes of the metrics stored with each statistic ``X``: ``X_chance``, ``X_minus_chance`` and its interval."""

CHANCE_REPLICATES = 200
"""Null replicates per null: the chance level's Monte Carlo error is then about 0.07 null standard deviations
and each interval end's about 0.2."""
CHANCE_SEED = 0
"""Seed of the null replicates (``numpy.random.SeedSequence``; one child stream per null)."""

_CHUNK = 1 << 22
"""Elements of one chunk of replicates' (replicates, S, L, E) or (replicates, style pairs, 64-bit words) arrays:
bounds memory."""


@dataclass(frozen=True)
class ExpertStats:
    """Expert-utilization statistics of one method."""

    values: dict[str, float]
    """Metric name → value: every statistic in ``DIRECTIONS`` and its ``CHANCE_PARTS`` (NaN where undefined)."""
    chance: pd.DataFrame
    """Statistics (``DIRECTIONS`` order) × nulls (``labels``, ``active``, ``uniform``): mean over the replicates
    of each null, whether or not it is the statistic's own (``NULLS``); empty without replicates."""
    usage_by_family: pd.DataFrame
    """Families × experts: mean over layers of the fraction of the family's styles choosing the expert."""
    n_styles: int
    """Distinct styles ``S``."""
    num_experts: int
    """Experts per layer ``E``."""


@dataclass(frozen=True)
class _Routing:
    """A routing table as arrays, one row per distinct style (sorted by ``style_id``)."""

    member: np.ndarray
    """``(S, L, E)`` bool: the style chose the expert in the layer."""
    family: np.ndarray
    """``(S,)`` int64 family codes, -1 where missing."""
    level: np.ndarray
    """``(S,)`` int64 level codes, -1 where missing."""


def _routing_arrays(styles: pd.DataFrame, num_experts: int) -> _Routing:
    """``styles``: the routing table, one row per (style, layer, slot)."""
    experts = styles.expert.to_numpy(dtype=np.int64)
    if len(experts) and (experts.min() < 0 or experts.max() >= num_experts):
        bad = experts[(experts < 0) | (experts >= num_experts)][0]
        raise ValueError(f"routing names expert {bad}, outside [0, {num_experts}): the stored routing and its "
                         "num_experts disagree; re-run the method to store its routing again")
    sid, ids = pd.factorize(styles.style_id, sort=True)
    layer, layers = pd.factorize(styles.layer, sort=True)
    member = np.zeros((len(ids), len(layers), num_experts), dtype=bool)
    member[sid, layer, experts] = True
    info = styles.drop_duplicates("style_id").set_index("style_id").reindex(ids)
    return _Routing(member, pd.factorize(info.family)[0].astype(np.int64),
                    pd.factorize(info.level)[0].astype(np.int64))


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """Mean of the finite entries along ``axis``; NaN where none (without numpy's empty-slice warning)."""
    ok = np.isfinite(x)
    n = ok.sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(ok, x, 0.0).sum(axis) / n, math.nan)


def _statistics(member: np.ndarray, family: np.ndarray, level: np.ndarray) -> dict[str, np.ndarray]:
    """Every statistic of ``DIRECTIONS`` for a stack of routings and labels.

    Args:
        member: ``(B, S, L, E)`` bool, ``B`` routings (or 1, shared by every label row).
        family, level: ``(B', S)`` int64 codes, -1 where missing; ``B'`` equal to ``B`` or 1.

    Returns:
        name → ``(max(B, B'),)`` float64.
    """
    n = max(len(member), len(family))
    n_styles, num_layers, num_experts = member.shape[1:]
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        usage = member.sum(1, dtype=np.float64) / n_styles  # (B, L, E)
        load = usage / usage.sum(-1, keepdims=True)
        out["expert_load_entropy"] = _nanmean(-np.where(load > 0, load * np.log(load), 0.0).sum(-1)
                                              / math.log(num_experts), -1)
        out["expert_dead_fraction"] = _nanmean((usage == 0).mean(-1), -1)
        out["expert_load_cv"] = _nanmean(usage.std(-1) / usage.mean(-1), -1)

        num_families = int(family.max()) + 1 if family.size else 0
        flat = member.reshape(len(member), n_styles, num_layers * num_experts)
        if len(family) == 1:  # one label row: sum each family's styles
            counts = np.stack([flat[:, family[0] == f].sum(1, dtype=np.int64) for f in range(num_families)], 1) \
                if num_families else np.zeros((n, 0, flat.shape[2]), dtype=np.int64)
        else:  # label rows (over one routing or as many): count (row, family, layer·expert) triples
            row, style, cell = np.nonzero(flat)
            if len(member) == 1:
                row, fam, cell = np.arange(n)[:, None], family[:, style], cell[None]
            else:
                fam = family[row, style]
            index = ((row * num_families + fam) * flat.shape[2] + cell)[fam >= 0]
            counts = np.bincount(index, minlength=n * num_families * flat.shape[2])
        counts = counts.reshape(n, num_families, num_layers, num_experts).transpose(0, 2, 1, 3)  # (n, L, F, E)
        # MI and family entropy per layer from c·log c of integer counts (one table look-up, no log per cell):
        # N·I = Σ c_fe log c_fe − Σ c_f log c_f − Σ c_e log c_e + N log N, N·H = N log N − Σ c_f log c_f
        c_family, c_expert = counts.sum(3), counts.sum(2)
        total = c_family.sum(2)
        c_log_c = np.arange(int(total.max(initial=0)) + 1, dtype=np.float64)
        c_log_c *= np.log(np.maximum(c_log_c, 1.0))
        h = c_log_c[total] - c_log_c[c_family].sum(2)
        mi = c_log_c[counts].sum((2, 3)) - c_log_c[c_expert].sum(2) + h
        out["expert_family_mi"] = _nanmean(np.where(h > 0, mi / np.where(h > 0, h, 1.0), math.nan), -1)

        # set sizes and intersections by popcount of packed bits, not a matrix product: BLAS on many small
        # matrices takes 10-50× longer when its threads compete with other processes for the cores
        bits = np.packbits(flat, axis=-1)
        bits = np.pad(bits, ((0, 0), (0, 0), (0, -bits.shape[2] % 8))).view(np.uint64)
        a, b = np.triu_indices(n_styles, 1)  # every pair of distinct styles once
        inter = np.bitwise_count(bits[:, a] & bits[:, b]).sum(-1, dtype=np.int64)  # (B, pairs)
        size = np.bitwise_count(bits).sum(-1, dtype=np.int64)
        union = size[:, a] + size[:, b] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        same_family = (family[:, a] == family[:, b]) & (family[:, a] >= 0)
        same_level = (level[:, a] == level[:, b]) & (level[:, a] >= 0)
        for name, mask in (("similar", same_family), ("related", ~same_family & same_level),
                           ("dissimilar", ~same_family & ~same_level)):
            count = mask.sum(1)
            out[f"routing_iou_{name}"] = np.where(count > 0, (iou * mask).sum(1) / np.maximum(count, 1), math.nan)
    return {k: np.broadcast_to(v, (n,)).astype(np.float64) for k, v in out.items()}


def _random_routings(count: np.ndarray, active: np.ndarray, replicates: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Random routings: in layer ``l`` style ``s`` draws ``count[s, l]`` distinct experts uniformly among those
    ``active[l]`` marks.

    Args:
        count: ``(S, L)`` int64 experts per style and layer, at most ``active[l].sum()``.
        active: ``(L, E)`` bool.

    Returns:
        ``(replicates, S, L, E)`` bool.
    """
    n_styles, num_layers = count.shape
    num_experts = active.shape[1]
    n_active = active.sum(1)  # (L,)
    ranked = np.where(active, np.arange(num_experts), num_experts)
    ranked.sort(axis=1)  # (L, E): layer l's active experts first, then the "no expert" column E
    k_max = int(count.max()) if count.size else 0
    picks = np.empty((replicates, n_styles, num_layers, k_max), dtype=np.int64)
    for j in range(k_max):  # sequential draws without replacement: the r-th of the not yet drawn positions
        r = (rng.random((replicates, n_styles, num_layers)) * np.maximum(n_active - j, 1)).astype(np.int64)
        for c in np.moveaxis(np.sort(picks[..., :j], -1), -1, 0):  # drawn so far, ascending
            r += r >= c
        picks[..., j] = r
    experts = ranked[np.arange(num_layers)[:, None], picks]  # (R, S, L, k_max)
    experts = np.where(np.arange(k_max) < count[..., None], experts, num_experts)
    member = np.zeros((replicates, n_styles, num_layers, num_experts + 1), dtype=bool)
    np.put_along_axis(member, experts, True, axis=-1)
    return member[..., :num_experts]


def _null_draws(routing: _Routing, null: Null, replicates: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every statistic under ``null`` (module docstring): name → ``(replicates,)``."""
    member, family, level = routing.member, routing.family, routing.level
    n_styles = member.shape[0]
    per_replicate = max(member.size, n_styles * n_styles // 2 * (member[0].size // 64 + 1), 1)
    chunk = max(1, _CHUNK // per_replicate)
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, replicates, chunk):
        b = min(chunk, replicates - start)
        if null == "labels":  # (family, level) moved together: families stay nested in levels
            order = rng.permuted(np.broadcast_to(np.arange(n_styles), (b, n_styles)), axis=1)
            parts.append(_statistics(member[None], family[order], level[order]))
        else:
            active = member.any(0) if null == "active" else np.ones(member.shape[1:], dtype=bool)
            parts.append(_statistics(_random_routings(member.sum(-1), active, b, rng), family[None], level[None]))
    return {k: np.concatenate([p[k] for p in parts]) for k in DIRECTIONS}


def _chance_parts(observed: float, draws: np.ndarray) -> dict[str, float]:
    """``CHANCE_PARTS`` of one statistic from its observed value and its null replicates."""
    draws = draws[np.isfinite(draws)]
    if not len(draws) or not math.isfinite(observed):
        return {"chance": float(np.mean(draws)) if len(draws) else math.nan, "minus_chance": math.nan,
                "minus_chance_lo": math.nan, "minus_chance_hi": math.nan}
    chance = float(draws.mean())
    q_lo, q_hi = np.quantile(draws, [0.025, 0.975])
    return {"chance": chance, "minus_chance": observed - chance, "minus_chance_lo": float(observed - q_hi),
            "minus_chance_hi": float(observed - q_lo)}


def usage_by_family(routing: pd.DataFrame, num_experts: int) -> pd.DataFrame:
    """Families × experts: mean over layers of the fraction of the family's distinct styles choosing the expert
    (a picture of the routing; no chance levels, so cheap)."""
    styles = routing.drop_duplicates(["style_id", "layer", "slot"])
    per_family = styles.groupby(["family", "layer"]).expert.value_counts().rename("n").reset_index()
    fam_styles = styles.drop_duplicates(["style_id"]).groupby("family").size()
    per_family["frac"] = per_family.n / per_family.family.map(fam_styles)
    n_layers = styles.layer.nunique()
    usage = (per_family.groupby(["family", "expert"]).frac.sum() / n_layers).unstack(fill_value=0.0)
    return usage.reindex(columns=range(num_experts), fill_value=0.0)


def expert_stats(routing: pd.DataFrame, num_experts: int, *, replicates: int = CHANCE_REPLICATES,
                 seed: int = CHANCE_SEED) -> ExpertStats:
    """All statistics and their chance levels for one method's routing table (see the module docstring).

    Args:
        routing: the long routing table (module docstring).
        num_experts: ``E``.
        replicates: null replicates per null; 0 skips the chance levels (their values are NaN).
        seed: seeds the null replicates; the same table, ``replicates`` and ``seed`` give the same values.
    """
    styles = routing.drop_duplicates(["style_id", "layer", "slot"])
    arrays = _routing_arrays(styles, num_experts)
    observed = {k: float(v[0]) for k, v in _statistics(arrays.member[None], arrays.family[None],
                                                        arrays.level[None]).items()}
    draws: dict[Null, dict[str, np.ndarray]] = {}
    if replicates > 0 and arrays.member.shape[0] > 0:
        streams = np.random.SeedSequence(seed).spawn(len(NULL_DESCRIPTIONS))
        draws = {null: _null_draws(arrays, null, replicates, np.random.default_rng(stream))
                 for null, stream in zip(NULL_DESCRIPTIONS, streams)}
    values: dict[str, float] = {}
    for name, value in observed.items():
        values[name] = value
        own = draws[NULLS[name]][name] if draws else np.empty(0)
        values |= {f"{name}_{part}": v for part, v in _chance_parts(value, own).items()}
    chance = pd.DataFrame({null: {k: float(_nanmean(v, 0)) for k, v in d.items()} for null, d in draws.items()},
                          index=list(DIRECTIONS))
    return ExpertStats(values, chance, usage_by_family(routing, num_experts), int(arrays.member.shape[0]),
                       num_experts)


DESCRIPTIONS = {
    "expert_load_entropy": "Entropy of the experts' load over distinct styles / log E, mean over layers (1 = even).",
    "expert_dead_fraction": "Fraction of (layer, expert) never in any distinct style's top-k.",
    "expert_load_cv": "Coefficient of variation of the experts' load over distinct styles, mean over layers.",
    "expert_family_mi": "Plug-in mutual information between a style's family and its chosen experts / family "
                        "entropy, mean over layers (biased up; see expert_family_mi_minus_chance).",
    "routing_iou_similar": "Mean IoU, pooled over layers, of the (layer, expert) sets of two styles of the same "
                           "family.",
    "routing_iou_related": "Mean IoU, pooled over layers, of the (layer, expert) sets of two styles of the same "
                           "level, other families.",
    "routing_iou_dissimilar": "Mean IoU, pooled over layers, of the (layer, expert) sets of two styles of "
                              "different levels.",
}
RANGES = {"expert_load_cv": (0.0, math.inf)}


def _part_description(name: str, part: str) -> str:
    null = f"{NULL_DESCRIPTIONS[NULLS[name]]} ({CHANCE_REPLICATES} replicates, seed {CHANCE_SEED})"
    if part == "chance":
        return f"Chance level of {name}: its mean under {null}."
    if part == "minus_chance":
        extra = " (shuffle-subtracted: the bias-corrected MI)" if name == "expert_family_mi" else ""
        return f"{name} minus its chance level{extra}; null: {null}."
    end, q = ("Lower", "97.5") if part == "minus_chance_lo" else ("Upper", "2.5")
    return (f"{end} end of the 95% interval of {name} minus chance: {name} minus the {q}th percentile of its null "
            f"replicates (covers 0 when a 5% test against the null does not reject); null: {null}.")


def _part_range(name: str, part: str) -> tuple[float, float]:
    lo, hi = RANGES.get(name, (0.0, 1.0))
    return (lo, hi) if part == "chance" else (lo - hi, hi - lo)


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
    """One expert-utilization statistic (or one of its chance-level parts) as a metric of scope ``experts``:
    ``compute(view) → float`` (``view`` a ``RoutingView``). Stored per method configuration (subset ``all``) with
    the set metrics."""

    info: ClassVar[MetricInfo]

    def compute(self, view: RoutingView) -> float:
        return view.stats.values[self.info.name]


def _expert_metric(name: str, hib: bool, value_range: tuple[float, float], description: str) -> type[ExpertMetric]:
    info = MetricInfo(name, hib, value_range, "experts", frozenset(), description=description, scope="experts")
    return type("".join(w.title() for w in name.split("_")), (ExpertMetric,), {"info": info, "__module__": __name__})


EXPERT_METRICS: tuple[type[ExpertMetric], ...] = tuple(
    metric
    for name, hib in DIRECTIONS.items()
    for metric in (_expert_metric(name, hib, RANGES.get(name, (0.0, 1.0)), DESCRIPTIONS[name]),
                   *(_expert_metric(f"{name}_{part}", hib, _part_range(name, part), _part_description(name, part))
                     for part in CHANCE_PARTS))
)
"""Every expert statistic followed by its ``CHANCE_PARTS``, in ``DIRECTIONS`` order; the evaluator computes all
of them for each method that stores routing (they need no weights and take a fraction of a second)."""
