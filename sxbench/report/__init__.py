"""The HTML report: store → summary tables → figures → ``index.html`` (jinja2, autoescaped).

The report never hard-codes a metric's direction: it reads ``higher_is_better`` from each stored value. Its
intervals and rank groups are ``sxbench.stats``'s (two-way cluster bootstrap over styles and contents, seeds averaged
per pair, paired differences with Holm's correction): ``leaderboards``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from sxbench.interfaces import PairSpec
from sxbench.records import IMPORTED_VERSION, stable_hash
from sxbench.report import summary
from sxbench.report.explore import portable, thumbnail, write_sample_data
from sxbench.runner import input_paths
from sxbench.store import DB_NAME, Store, UnsafePathError, contained

log = logging.getLogger(__name__)

GROUP_ORDER = ("fidelity", "style", "detail", "quality", "experts", "efficiency")
LEVEL_ORDER = ("color", "texture", "material", "stroke", "none")
SPLIT_ORDER = ("seen", "unseen", "all")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a CSV cell as a formula (OWASP, CSV injection)."""


def _failed_values(values: pd.DataFrame) -> list[dict[str, Any]]:
    """``[{method, metric, failed, of}]`` for every (method, metric) with values stored as failed (NULL: the metric
    returned NaN, e.g. a judge's unparseable answer), so a reader sees how many samples each mean leaves out."""
    if values.empty:
        return []
    g = values.assign(failed=values.value.isna()).groupby(["method", "metric"]).failed.agg(["sum", "size"])
    return [{"method": m, "metric": k, "failed": int(r["sum"]), "of": int(r["size"])}
            for (m, k), r in g.iterrows() if r["sum"] > 0]


def _backbone_label(backbone: str | None) -> dict[str, str]:
    """``{"backbone_label", "caveat"}`` of a stored ``name@sha`` backbone: which network and weights really
    computed the metric, and how they depart from what a reader would assume (``weights.Backbone``)."""
    if not backbone:
        return {"backbone_label": "weight-free", "caveat": ""}
    from sxbench.metrics.backbone import backbone_provenance

    try:
        label, caveat = backbone_provenance(backbone)
    except KeyError:  # a plugin's backbone this installation does not know
        return {"backbone_label": backbone, "caveat": ""}
    return {"backbone_label": f"{label} [{backbone}]", "caveat": caveat}


def _known_first(present: Iterable[Any], known: Sequence[str]) -> list[str]:
    """The distinct values of ``present`` (levels, splits): those in ``known`` in its order, then a protocol's own
    (``ink wash``) in name order, so a value the report does not know is shown, not dropped."""
    present = {v for v in present if pd.notna(v)}
    return [v for v in known if v in present] + sorted(present - set(known), key=str)


def _literal_text():
    """A matplotlib ``rc_context`` in which every text is drawn as given: figure labels are user strings (split,
    level, family, method and metric names) and a ``$`` in one would otherwise be parsed as mathtext, failing the
    whole report on ``$\\foo$``. Figures must be created and saved inside it (a text reads the setting when made)."""
    import matplotlib

    return matplotlib.rc_context({"text.parse_math": False})


def config_labels(method_infos: dict[tuple[str, str], dict[str, Any]],
                  present: Sequence[tuple[str, str]] | None = None) -> dict[tuple[str, str], str]:
    """A row name for each stored method configuration: the method's name where the store holds one configuration
    of it, else the name with the parameters that tell its configurations apart (``adain (colour=decoder)``), or
    with the configuration hash where no parameter does. ``present``: the ``(method, config)`` pairs to name
    (default: all in ``method_infos``); a store keeps the outputs of every configuration it has run, and the
    report shows them side by side rather than pooled under one name."""
    keys = sorted(set(present) if present is not None else set(method_infos))
    by_name: dict[str, list[str]] = {}
    for name, config in keys:
        by_name.setdefault(name, []).append(config)
    labels: dict[tuple[str, str], str] = {}
    for name, configs in by_name.items():
        if len(configs) == 1:
            labels[(name, configs[0])] = name
            continue
        params = {c: {k: v for k, v in method_infos.get((name, c), {}).get("params", {}).items() if k != "reproduce"}
                  for c in configs}
        differ = [k for k in sorted({k for p in params.values() for k in p})
                  if len({json.dumps(p.get(k), sort_keys=True, default=str) for p in params.values()}) > 1]
        for c in configs:
            shown = ", ".join(f"{k}={_short(params[c].get(k))}" for k in differ)
            labels[(name, c)] = f"{name} ({shown})" if shown else f"{name} ({c[:8]})"
        if len({labels[(name, c)] for c in configs}) < len(configs):  # shortened values collide: the hashes
            labels.update({(name, c): f"{name} ({c[:8]})" for c in configs})
    return labels


def _short(v: Any, width: int = 16) -> str:
    text = json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else str(v)
    return text if len(text) <= width else text[: width - 4] + "…"


def _relabel(df: pd.DataFrame, labels: dict[tuple[str, str], str]) -> pd.DataFrame:
    """``df`` with its ``method`` column replaced by each row's configuration label."""
    if not len(df) or "method_config" not in df.columns:
        return df
    return df.assign(method=[labels.get((m, c), m) for m, c in zip(df.method, df.method_config)])


def grid_pairs(pairs: Sequence[PairSpec], n: int = 8) -> list[PairSpec]:
    """Pairs shown in the image grid: the first of each (split, level), in protocol order, at most ``n``."""
    chosen, seen = [], set()
    for p in pairs:
        if (p.split, p.level) not in seen:
            seen.add((p.split, p.level))
            chosen.append(p)
    for p in pairs:  # protocols without levels: fill up with the first pairs
        if len(chosen) >= n:
            break
        if p not in chosen:
            chosen.append(p)
    return chosen[:n]


def mean_ci(values: pd.Series) -> tuple[float, float, int]:
    """Mean, half-width of the 95% Student-t confidence interval, and count, treating the values as independent.
    Not what the leaderboard shows: its intervals are clustered by style and content (``leaderboard``)."""
    return _mean_ci(values.dropna().to_numpy(dtype=float))


def _mean_ci(v: np.ndarray) -> tuple[float, float, int]:
    """``mean_ci`` of a float array without NaN."""
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.nan, 1
    half = float(_t975(n - 1) * v.std(ddof=1) / math.sqrt(n))
    return float(v.mean()), half, n


@functools.lru_cache(maxsize=None)
def _t975(dof: int) -> float:
    """97.5% quantile of Student's t: one scipy call per sample size, not per table cell."""
    from scipy import stats

    return stats.t.ppf(0.975, dof)


REPORT_N_BOOT = 1000
"""Bootstrap replicates of the leaderboard's intervals and rank groups: half of ``sxbench.stats.N_BOOT`` (2000,
which ``sxbench compare`` uses), which halves the report's bootstrap time. The Monte Carlo error of a bootstrap
standard error is about 1/√(2B) of it: 2.2% of a half-width at 1000 replicates, 1.6% at 2000, so the report's
intervals and ``sxbench compare``'s agree to a few percent of their width, not to the digit."""
ALPHA = 0.05
"""A method is significantly worse than another when the Holm-adjusted p of their paired difference is below it
(equivalently, for one comparison, the 95% interval of the difference excludes 0)."""
LEGACY_CONTROLS = ("identity", "stylecopy")
"""Controls of stores written before ``MethodInfo.control`` existed (no ``control`` in the stored info): the two
in-repo controls, by name. A stored ``control`` always wins."""


def is_control(info: dict[str, Any]) -> bool:
    """Whether a stored method info (``Store.methods()`` value) is a control, a reference row never ranked:
    its ``control`` field, or, in stores written before that field, its name in ``LEGACY_CONTROLS``."""
    if "control" in info:
        return bool(info["control"])
    return info.get("name") in LEGACY_CONTROLS


@dataclass(frozen=True)
class Cell:
    """One leaderboard entry: a method's mean over the pairs it has in one column, and its rank group."""

    mean: float
    """Mean over pairs of each pair's mean over seeds (``sxbench.stats.seed_means``), in the metric's units; NaN
    where the method has no value in the column."""
    ci: float
    """Half-width of the 95% two-way cluster bootstrap interval (styles × contents, ``sxbench.stats.method_ci``);
    NaN where there is none (fewer than two pairs, or one style and one content)."""
    n: int
    """Pairs with a value (a pair run with several seeds counts once)."""
    group: int | None
    """Rank group (``rank_groups``): 1 = not significantly worse than the column's best method; ``None`` for
    controls and empty cells."""
    best: bool
    """In group 1 (drawn bold)."""
    control: bool = False
    """A reference row (``is_control``): never ranked, never bold."""
    against: str | None = None
    """The column's best method, which ``diff`` compares with; ``None`` for that method, controls and empty cells."""
    diff: float = math.nan
    """Mean paired difference (this method − ``against``) over the pairs both have, in the metric's units."""
    diff_low: float = math.nan
    """Lower end of the difference's 95% two-way cluster bootstrap interval."""
    diff_high: float = math.nan
    """Upper end of that interval."""
    p_holm: float = math.nan
    """Holm-adjusted two-sided p of ``diff`` = 0, across the methods compared with ``against`` in the column."""
    n_paired: int = 0
    """Pairs both this method and ``against`` have."""

    @property
    def rank(self) -> int | None:
        """The rank group (``group``), under the name the leaderboard used before rank groups."""
        return self.group

    @property
    def text(self) -> str:
        if self.n == 0 or not math.isfinite(self.mean):
            return "–"
        return f"{self.mean:.3f}" + (f" ± {self.ci:.3f}" if math.isfinite(self.ci) else "")

    @property
    def note(self) -> str:
        """A tooltip: how the cell was computed and how it compares with the column's best."""
        if self.n == 0 or not math.isfinite(self.mean):
            return "no value"
        what = f"{self.n} pair(s), seeds averaged per pair"
        if self.control:
            return f"{what}; control: a reference row, not ranked"
        if self.against is None:
            return f"{what}; best mean of the column (group {self.group})"
        if self.n_paired == 0:
            return f"{what}; no pair in common with {self.against}: not compared (group {self.group})"
        interval = f"[{self.diff_low:+.4g}, {self.diff_high:+.4g}]" if math.isfinite(self.diff_low) else "[no interval]"
        p = "–" if not math.isfinite(self.p_holm) else "<0.001" if self.p_holm < 0.001 else f"{self.p_holm:.3f}"
        return (f"{what}; minus {self.against} (the column's best): {self.diff:+.4g} {interval} over "
                f"{self.n_paired} common pairs, p_holm {p} (group {self.group})")


def leaderboard(values: pd.DataFrame, by: str | None = None, *, controls: Iterable[str] = (),
                n_boot: int = REPORT_N_BOOT, seed: int = 0) -> dict[str, dict[Any, dict[str, Cell]]]:
    """``{metric: {column: {method: Cell}}}``; columns are ``"all"`` or the values of ``by`` (``"level"`` or
    ``"split"``). One table of ``leaderboards``."""
    return leaderboards(values, (by,), controls=controls, n_boot=n_boot, seed=seed)[by]


def leaderboards(values: pd.DataFrame, bys: Sequence[str | None] = (None, "split", "level"), *,
                 controls: Iterable[str] = (), n_boot: int = REPORT_N_BOOT,
                 seed: int = 0) -> dict[str | None, dict[str, dict[Any, dict[str, Cell]]]]:
    """``{by: {metric: {column: {method: Cell}}}}`` for each table of ``bys`` (``None``: one column ``"all"``;
    ``"split"``, ``"level"``: a column per value).

    Every (metric, column, method) with a stored value, failed or not, has a cell. The numbers are
    ``sxbench.stats``'s: each method's mean and interval are ``method_ci``'s and each comparison is
    ``paired_differences``'s (seeds averaged per pair by ``seed_means``, two-way cluster bootstrap over styles and
    contents, Holm across the methods compared), with the same ``n_boot`` and ``seed``, so the same values
    (``tests/test_report_stats.py`` checks it). They are computed here rather than by calling those functions per
    column and comparison, which took seconds per table: the values are pivoted once, and every statistic of a
    column (each method's mean and each difference between two ranked methods, over all metrics) that covers the
    same pairs goes through one ``cluster_bootstrap`` call. Its draws depend only on the seed and the clusters, so a
    statistic's result does not depend on what shares its call. Rank groups: ``rank_groups``. Controls (labels
    as in ``values.method``) get a mean and an interval but are never compared or ranked."""
    from sxbench.stats import seed_means

    out: dict[str | None, dict[str, dict[Any, dict[str, Cell]]]] = {by: {} for by in bys}
    if values.empty:
        return out
    controls = set(controls)
    for by in bys:  # the cells to fill: every (metric, column, method) stored, failed values included
        keys = ["metric", "method"] if by is None else ["metric", by, "method"]
        for key in values[keys].dropna().drop_duplicates().itertuples(index=False):
            column = "all" if by is None else key[1]
            out[by].setdefault(str(key[0]), {}).setdefault(column, {})[str(key[-1])] = None
    hib = {str(k): bool(v) for k, v in values.groupby("metric", sort=True).higher_is_better.first().items()}
    means = seed_means(values)
    if len(means):  # units (pairs, in stats' order) × (metric, method), and each unit's labels
        unit = [c for c in ("protocol", "pair_id") if c in means.columns]
        wide = means.pivot(index=unit, columns=["metric", "method"], values="value")
        labels = means.drop_duplicates(unit).set_index(unit).reindex(wide.index)
        x = wide.to_numpy(dtype=np.float64)
        style, content = labels.style_id.to_numpy(dtype=object), labels.content_id.to_numpy(dtype=object)
        where: dict[str, dict[str, int]] = {}  # metric → method → column of x
        for j, (metric, method) in enumerate(wide.columns):
            where.setdefault(str(metric), {})[str(method)] = j
    for by in bys:
        columns = list(dict.fromkeys(c for per_metric in out[by].values() for c in per_metric))
        for column in columns:
            metrics = [m for m in out[by] if column in out[by][m]]
            found: dict[str, dict[str, Cell]] = {}
            if len(means):
                keep = np.ones(len(x), dtype=bool) if by is None else (labels[by].to_numpy(dtype=object) == column)
                found = _column_cells(x[keep], style[keep], content[keep], {m: where.get(m, {}) for m in metrics},
                                      controls, hib, n_boot, seed)
            for metric in metrics:
                cells = out[by][metric][column]
                out[by][metric][column] = {
                    m: found.get(metric, {}).get(m) or Cell(math.nan, math.nan, 0, None, False, m in controls)
                    for m in sorted(cells)}
    return out


def _column_cells(x: np.ndarray, style: np.ndarray, content: np.ndarray, where: dict[str, dict[str, int]],
                  controls: set[str], hib: dict[str, bool], n_boot: int, seed: int) -> dict[str, dict[str, Cell]]:
    """``{metric: {method: Cell}}`` of one column from ``x`` (the column's units × (metric, method) columns,
    float64, NaN where a method has no value for a unit), each unit's style and content labels, and ``where``
    (metric → method → column of ``x``): every method's mean with its interval, and the ranked methods' pairwise
    differences, each over the units that have its values; statistics on the same units share one
    ``sxbench.stats.cluster_bootstrap`` call."""
    from sxbench.stats import cluster_bootstrap

    has = ~np.isnan(x)
    jobs: dict[bytes, tuple[np.ndarray, list[np.ndarray], list[tuple[str, str, str | None]]]] = {}

    def add(mask: np.ndarray, row: np.ndarray, key: tuple[str, str, str | None]) -> None:
        job = jobs.setdefault(mask.tobytes(), (mask, [], []))
        job[1].append(row)
        job[2].append(key)

    ranked: dict[str, list[str]] = {}
    for metric, cols in where.items():
        present = [m for m, j in cols.items() if has[:, j].any()]
        ranked[metric] = [m for m in present if m not in controls]
        for m in present:
            add(has[:, cols[m]], x[:, cols[m]], (metric, m, None))
        for i, a in enumerate(ranked[metric]):
            for b in ranked[metric][i + 1:]:
                common = has[:, cols[a]] & has[:, cols[b]]
                if common.any():
                    add(common, x[:, cols[a]] - x[:, cols[b]], (metric, a, b))
    result: dict[tuple[str, str, str | None], tuple[int, float, float, float, float]] = {}
    for mask, rows, keys in jobs.values():
        ci = cluster_bootstrap(np.stack([r[mask] for r in rows]), style[mask], content[mask], n_boot=n_boot,
                               seed=seed)
        n = int(mask.sum())
        for k, key in enumerate(keys):
            result[key] = (n, float(ci.estimate[k]), float(ci.ci_low[k]), float(ci.ci_high[k]), float(ci.p[k]))

    out: dict[str, dict[str, Cell]] = {}
    for metric in where:
        def compare(m: str, against: str, metric: str = metric) -> tuple[int, float, float, float, float]:
            """``(n, diff, low, high, p)`` of m − against (n 0 and NaN where they share no unit)."""
            if (metric, m, against) in result:
                return result[(metric, m, against)]
            if (metric, against, m) in result:
                n, d, lo, hi, p = result[(metric, against, m)]
                return n, -d, -hi, -lo, p
            return 0, math.nan, math.nan, math.nan, math.nan

        groups = rank_groups({m: result[(metric, m, None)][1] for m in ranked[metric]}, compare, hib[metric])
        cells = out.setdefault(metric, {})
        for (mm, m, other), (n, mean, lo, hi, _) in result.items():
            if mm != metric or other is not None:
                continue
            g, versus = groups.get(m, (None, None))
            extra = {} if versus is None else dict(zip(("against", "n_paired", "diff", "diff_low", "diff_high",
                                                        "p_holm"), versus))
            cells[m] = Cell(mean, (hi - lo) / 2, n, g, g == 1, m in controls, **extra)
    return out


def rank_groups(means: dict[str, float], compare: Any, higher_is_better: bool,
                alpha: float = ALPHA) -> dict[str, tuple[int, tuple | None]]:
    """Rank groups of one leaderboard column: ``{method: (group, comparison with the column's best or None)}``.

    Group 1 holds the method with the best mean and every method not significantly worse than it: its paired
    difference from the best (``compare(method, best)`` → ``(n, diff, low, high, p)``, as
    ``sxbench.stats.paired_differences`` gives it) has a Holm-adjusted p ≥ ``alpha`` across the methods compared, or
    favours the method. A difference without an interval (no common pair, too few clusters) does not show a method
    worse. The others are grouped by the same rule: group 2 is the best of them and those not significantly worse
    than it (Holm across those compared), and so on. The comparison returned, ``(against, n, diff, low, high,
    p_holm)``, is the one with the column's best method (p Holm-adjusted across all methods compared with it), so a
    cell can state its distance to the top; ``None`` for the best itself.

    Args:
        means: the methods to group (controls left out) and their means.
        compare: ``compare(method, against)`` → ``(n, diff, low, high, p)`` with diff = method − against.
        higher_is_better: the metric's direction.
        alpha: the significance level.
    """
    from sxbench.stats import holm

    remaining = sorted(means, key=lambda m: (-means[m] if higher_is_better else means[m], m))  # best first
    worse_sign = -1.0 if higher_is_better else 1.0
    out: dict[str, tuple[int, tuple | None]] = {}
    versus_top: dict[str, tuple] = {}
    group = 0
    while remaining:
        group += 1
        best, rest = remaining[0], remaining[1:]
        out[best] = (group, versus_top.get(best))
        if not rest:
            break
        diffs = [compare(m, best) for m in rest]
        p_holm = holm(d[4] for d in diffs)
        worse = []
        for m, (n, diff, lo, hi, _), p in zip(rest, diffs, p_holm):
            if group == 1:
                versus_top[m] = (best, n, diff, lo, hi, float(p))
            if p < alpha and np.sign(diff) == worse_sign:
                worse.append(m)
            else:
                out[m] = (group, versus_top.get(m))
        remaining = worse
    return out


NOVELTY_LABELS = {"new_family": "unseen: new family", "new_range": "unseen: new range"}
"""Column titles of the kinds of unseen pair (``sxbench.stats.novelty``)."""


def _novelty_gaps(values: pd.DataFrame, n_boot: int = REPORT_N_BOOT,
                  seed: int = 0) -> dict[str, dict[str, dict[str, Any]]] | None:
    """The seen-vs-unseen gaps by kind of unseen pair: ``{metric: {method: {"seen": {mean, n}, "new_family": {mean,
    n, gap, ci_low, ci_high}, "new_range": {…}}}}`` from ``sxbench.stats.split_gap`` (gap = that kind's mean − the
    seen mean, 95% two-way cluster bootstrap interval), or ``None`` unless ``values`` holds seen pairs and both kinds
    of unseen pair (``sxbench.stats.novelty``: a family with no seen pair, or a seen family's held-out range)."""
    from sxbench.stats import NEW_FAMILY, NEW_RANGE, SEEN, novelty, split_gap

    if values.empty or not {"split", "family"} <= set(values.columns):
        return None
    kinds = novelty(values)
    if not {SEEN, NEW_FAMILY, NEW_RANGE} <= set(kinds.dropna()):
        return None
    log.info("report: seen-vs-unseen gaps by kind of unseen pair")
    gaps = split_gap(values.assign(novelty=kinds), a=SEEN, b=(NEW_FAMILY, NEW_RANGE), n_boot=n_boot, seed=seed)

    def number(v: Any) -> float | None:
        return float(v) if pd.notna(v) else None

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in gaps.itertuples(index=False):
        cell = out.setdefault(str(r.metric), {}).setdefault(str(r.method), {})
        cell.setdefault(SEEN, {"mean": number(r.mean_a), "n": int(r.n_a)})
        cell[r.group] = {"mean": number(r.mean_b), "n": int(r.n_b), "gap": number(r.gap),
                         "ci_low": number(r.ci_low), "ci_high": number(r.ci_high)}
    return out


def _level_stats(values: pd.DataFrame, levels: Sequence[str], n_boot: int = 200,
                 seed: int = 0) -> dict[tuple[str, str], list[tuple[int, float, float, float]]]:
    """``{(metric, method): [(level index, mean, CI low, CI high)]}`` over the non-NaN values of each (metric,
    method, level in ``levels``): the numbers ``sns.barplot(errorbar=("ci", 95), n_boot=n_boot, seed=seed)`` draws,
    bootstrap resamples included (seaborn seeds every interval afresh, so they depend on the count only and are
    drawn once per count), without its pandas ``apply`` per bar. Fewer than two values: no interval (NaN)."""
    d = values[values.level.isin(levels) & values.value.notna()]
    value = d.value.to_numpy(dtype=float)
    position = {lv: i for i, lv in enumerate(levels)}
    resamples: dict[int, np.ndarray] = {}
    out: dict[tuple[str, str], list[tuple[int, float, float, float]]] = {}
    for (metric, method, level), idx in d.groupby(["metric", "method", "level"], sort=False).indices.items():
        v = value[idx]
        lo = hi = math.nan
        if len(v) > 1:
            if len(v) not in resamples:
                rng = np.random.default_rng(seed)
                resamples[len(v)] = np.stack([rng.integers(0, len(v), len(v), dtype=np.intp) for _ in range(n_boot)])
            lo, hi = np.nanpercentile(v[resamples[len(v)]].mean(axis=1), (2.5, 97.5))
        out.setdefault((metric, method), []).append((position[level], float(v.mean()), lo, hi))
    return out


def _level_bars(values: pd.DataFrame, path: Path, dpi: int = 110) -> None:
    """One panel per metric (four to a row): a bar per style level and method, the mean of its values with a 95%
    bootstrap interval (``_level_stats``), drawn as ``sns.catplot(kind="bar", col_wrap=4, sharey=False, height=2.6,
    aspect=1.25, errorbar=("ci", 95), n_boot=200, seed=0)`` draws it (same numbers, colours, geometry and legend)
    but with one artist per panel: seaborn's per-bar aggregation and repeated layout passes took most of the
    report's time. Levels in ``_known_first`` order: the known ones first, then the protocol's own (catplot's ``order``
    would leave those out)."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.patches import Rectangle

    metrics = sorted(values.metric.unique())
    levels = _known_first(values.level.unique(), LEVEL_ORDER)
    hues = [m for m in pd.unique(values.method) if pd.notna(m)]  # seaborn's order: as they appear
    palette = sns.color_palette(n_colors=len(hues)) if len(hues) <= len(sns.color_palette()) \
        else sns.color_palette("husl", len(hues))
    hib = values.groupby("metric").higher_is_better.first()
    bars = _level_stats(values, levels)

    ncol, height, width = 4, 2.6, 2.6 * 1.25
    nrow = max(1, math.ceil(len(metrics) / ncol))
    fig = plt.figure(figsize=(ncol * width, nrow * height))
    axes: list[Any] = []
    step = 0.8 / len(hues)  # bar width: seaborn's 0.8 per level, dodged between the methods
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(nrow, ncol, i + 1, **({"sharex": axes[0]} if axes else {}))
        axes.append(ax)
        # every bar of the panel in one call, every interval in one NaN-separated line: one artist each, not one
        # per method and bar
        b = [(pos + step * h - 0.4, mean, lo, hi, colour)  # left edge
             for h, (method, colour) in enumerate(zip(hues, palette))
             for pos, mean, lo, hi in bars.get((metric, method), ())]
        if b:
            left, mean, lo, hi, colour = zip(*b)
            ax.bar(left, mean, step, align="edge", color=colour)
            ax.plot(np.repeat(np.add(left, step / 2), 3), np.column_stack([lo, hi, np.full(len(b), np.nan)]).ravel(),
                    color=".26", linewidth=1.5 * plt.rcParams["lines.linewidth"])
        ax.set_xticks(range(len(levels)), levels)
        ax.xaxis.grid(False)
        ax.set_xlim(-0.5, len(levels) - 0.5)
        ax.set_title(f"{metric} {'↑' if hib[metric] else '↓'}")
        ax.spines[["top", "right"]].set_visible(False)
        n_empty = nrow * ncol - len(metrics)
        if i >= ncol * (nrow - 1) - n_empty:  # bottom of its column
            ax.set_xlabel("level")
        else:
            ax.tick_params(axis="x", labelbottom=False)
        if i % ncol == 0:
            ax.set_ylabel("value")
    # lay the panels out once, then widen the figure by the legend, keeping the panels where they are (a
    # tight_layout with a rect beside the legend costs two layout passes)
    fig.tight_layout()
    legend = fig.legend([Rectangle((0, 0), 0, 0, facecolor=c) for c in palette], hues, loc="center right",
                        frameon=False, title="method")
    legend_w = legend.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi
    grid_w = ncol * width
    sp = fig.subplotpars
    fig.set_size_inches(grid_w + legend_w, nrow * height)
    fig.subplots_adjust(left=sp.left * grid_w / (grid_w + legend_w), right=sp.right * grid_w / (grid_w + legend_w))
    _save(fig, path, dpi)


def _save(fig: Any, path: Path, dpi: int) -> None:
    """Write ``fig`` (its layout final) as PNG and close it. ``tight_layout`` leaves a placeholder layout engine on
    the figure, for which ``savefig`` runs a second, layout-only draw of the whole figure; removing it spares that."""
    import matplotlib.pyplot as plt

    from sxbench.runner import atomic_write

    fig.set_layout_engine(None)
    atomic_write(Path(path), lambda fh: fig.savefig(fh, dpi=dpi, format="png"))  # a reader never sees half a PNG
    plt.close(fig)


def _figures(values: pd.DataFrame, fig_dir: Path) -> list[dict[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig_dir.mkdir(parents=True, exist_ok=True)
    figs = []
    sns.set_theme(style="whitegrid", context="paper")
    if not values.empty:
        # the trade-off plots a metric of each group that has values (one whose samples all failed has none)
        groups = values[values.value.notna()].groupby("metric_group").metric.first().to_dict()
        fid, sty = groups.get("fidelity"), groups.get("style")
        log.info("report: figures (%d)", 2 if fid and sty else 1)
        _level_bars(values, fig_dir / "metrics_by_level.png")
        figs.append({"file": "figures/metrics_by_level.png",
                     "caption": "Mean per method and style level with 95% bootstrap CI (↑ higher is better, ↓ lower)."})
        if fid and sty:
            piv = values[values.metric.isin([fid, sty])].pivot_table(
                index=["method", "split"], columns="metric", values="value", aggfunc="mean").reset_index()
            # matplotlib leaves a label starting with "_" out of a legend: a leading space keeps it, looking the same
            piv[["method", "split"]] = piv[["method", "split"]].map(lambda s: f" {s}" if str(s).startswith("_") else s)
            fig, ax = plt.subplots(figsize=(5.2, 4))
            sns.scatterplot(data=piv, x=sty, y=fid, hue="method", style="split", s=90, ax=ax)
            hib_s = bool(values[values.metric == sty].higher_is_better.iloc[0])
            hib_f = bool(values[values.metric == fid].higher_is_better.iloc[0])  # each axis takes its metric's direction
            ax.set_xlabel(f"{sty} ({'higher' if hib_s else 'lower'} is better)")
            ax.set_ylabel(f"{fid} ({'higher' if hib_f else 'lower'} is better)")
            ax.set_title("Content fidelity vs style similarity")
            ax.legend(fontsize=7, loc="best")
            fig.tight_layout()
            _save(fig, fig_dir / "tradeoff.png", 110)
            figs.append({"file": "figures/tradeoff.png",
                         "caption": f"Each method's mean {fid} against mean {sty}, split by seen/unseen styles."})
    return figs


NOT_COMPUTED = "not computed: rerun `sxbench run` (or `sxbench report` after a run) to compute expert statistics"
"""Shown for a mixture method whose routing is stored but whose expert statistics are not (stores written before
the evaluator stored them): the report reads those statistics, it does not compute them."""


def _expert_section(routing: pd.DataFrame, set_values: pd.DataFrame, metric_infos: dict[str, dict[str, Any]],
                    fig_dir: Path) -> tuple[dict[str, Any] | None, list[dict[str, str]]]:
    """The expert-utilization tables and their figures.

    Numbers: the stored expert statistics (``set_values`` rows of group ``experts``, subset ``all``, one per method
    configuration and statistic, ``n`` its distinct styles), never recomputed here. Returns ``({"columns":
    [{metric, hib, description}], "rows": [{method, n_styles, num_experts, cells}], "missing": [{method, n_styles,
    num_experts}], "chance": [{method, metric, hib, observed, chance, null, diff, lo, hi, excludes_zero, n}]},
    figures)``; ``columns`` are the statistics (``sxbench.metrics.experts.DIRECTIONS``), ``chance`` their chance
    levels and observed − chance with the null's 95% interval; ``missing``: methods with stored routing and no
    stored statistics. Figures: expert usage by style family (a picture of the stored routing, drawn here) and the
    stored routing IoU per method with its chance level."""
    from sxbench.metrics.experts import DIRECTIONS, EXPERT_METRICS, NULL_DESCRIPTIONS, NULLS, usage_by_family

    ev = set_values[(set_values.metric_group == "experts") & (set_values.subset == "all")] if len(set_values) \
        else set_values
    routed = sorted(routing.method.unique()) if len(routing) else []
    stored = sorted(ev.method.unique()) if len(ev) else []
    if not routed and not stored:
        return None, []
    log.info("report: expert section")
    known = {m.info.name: m.info for m in EXPERT_METRICS}  # directions and descriptions where none stored
    hib = ev.groupby("metric").higher_is_better.first().to_dict() if len(ev) else {}
    names = list(DIRECTIONS)  # the statistics; their chance levels get a table of their own
    columns = [{"metric": n, "hib": bool(hib[n]) if n in hib else DIRECTIONS[n],
                "description": metric_infos.get(n, {}).get("description") or getattr(known.get(n), "description", "")}
               for n in names]
    experts = routing.groupby("method").num_experts.first().to_dict() if len(routing) else {}
    styles = routing.groupby("method").style_id.nunique().to_dict() if len(routing) else {}
    cells: dict[str, dict[str, float | None]] = {}
    n_styles: dict[str, int] = {}
    for r in ev.itertuples():
        cells.setdefault(r.method, {}).setdefault(r.metric, None if pd.isna(r.value) else float(r.value))
        n_styles[r.method] = max(n_styles.get(r.method, 0), int(r.n))
    rows = [{"method": m, "n_styles": n_styles[m], "num_experts": experts.get(m),
             "cells": [cells[m].get(n) for n in names]} for m in stored]
    missing = [{"method": m, "n_styles": styles[m], "num_experts": experts[m]} for m in routed if m not in cells]
    chance = []
    for m in stored:
        for n in names:
            got = {part: cells[m].get(f"{n}_{part}") for part in ("chance", "minus_chance", "minus_chance_lo",
                                                                  "minus_chance_hi")}
            if got["chance"] is None:
                continue
            lo, hi = got["minus_chance_lo"], got["minus_chance_hi"]
            chance.append({"method": m, "metric": n, "hib": DIRECTIONS[n], "observed": cells[m].get(n),
                           "chance": got["chance"], "null": NULL_DESCRIPTIONS[NULLS[n]], "diff": got["minus_chance"],
                           "lo": lo, "hi": hi, "excludes_zero": lo is not None and hi is not None and (lo > 0 or hi < 0),
                           "bias_corrected": n == "expert_family_mi", "n": n_styles[m]})
    table = {"columns": columns, "rows": rows, "missing": missing, "chance": chance}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    figs = []
    fig_dir.mkdir(parents=True, exist_ok=True)
    if routed:
        fig, axes = plt.subplots(1, len(routed), figsize=(6.5 * len(routed), 5), squeeze=False)
        for ax, (method, d) in zip(axes[0], routing.groupby("method", sort=True)):
            usage = usage_by_family(d, int(d.num_experts.iloc[0]))
            sns.heatmap(usage, ax=ax, cmap="viridis", vmin=0, cbar_kws={"label": "fraction of styles"})
            ax.set_title(f"{method}: expert usage by style family (mean over layers)")
            ax.set_xlabel("expert")
        fig.tight_layout()
        _save(fig, fig_dir / "expert_usage.png", 100)
        figs.append({"file": "figures/expert_usage.png", "caption": "How often each expert is chosen for the styles "
                                                                    "of each family (averaged over layers)."})
    kinds = ("similar", "related", "dissimilar")
    with_iou = [m for m in stored if any(cells[m].get(f"routing_iou_{k}") is not None for k in kinds)]
    if with_iou:
        fig, ax = plt.subplots(figsize=(max(5.5, 1.6 * len(with_iou) + 2.5) + 1.6, 3.6))
        width = 0.26
        palette = sns.color_palette(n_colors=len(kinds))
        for j, kind in enumerate(kinds):
            xs = [i + (j - 1) * width for i in range(len(with_iou))]
            ys = [cells[m].get(f"routing_iou_{kind}") for m in with_iou]
            ax.bar(xs, [np.nan if y is None else y for y in ys], width * 0.95, color=palette[j], label=kind)
            for x, m in zip(xs, with_iou):  # the chance level of that bar: the same IoU with the labels permuted
                c = cells[m].get(f"routing_iou_{kind}_chance")
                if c is not None:
                    ax.hlines(c, x - width / 2, x + width / 2, colors="k", lw=2,
                              label="chance" if (j, m) == (0, with_iou[0]) else None)
        ax.set_xticks(range(len(with_iou)), with_iou)
        ax.set_ylabel("routing IoU (higher: more shared experts)")
        ax.axhline(0.3318, ls="--", c="grey", lw=0.8, label="paper: similar")
        ax.axhline(0.1060, ls=":", c="grey", lw=0.8, label="paper: dissimilar")
        ax.set_title("Routing IoU between styles, with its chance level", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
        fig.tight_layout()
        _save(fig, fig_dir / "routing_iou.png", 110)
        figs.append({"file": "figures/routing_iou.png",
                     "caption": "Expert-set IoU (pooled over layers) for pairs of styles of the same family (similar), "
                                "the same level (related) and different levels (dissimilar). Black bars: chance, the "
                                "same routing with the styles' labels permuted; dashed/dotted: the paper's figures, "
                                "which a router at chance can reach (see the table of chance levels)."})
    return table, figs


def _training_curves(method_infos: list[dict[str, Any]], fig_dir: Path) -> list[dict[str, str]]:
    """Loss curves of every training log (``*.json`` with a ``history``) in a method's checkpoint folder."""
    logs = []
    for m in method_infos:
        ckpt = m.get("provenance", {}).get("checkpoint") or m.get("params", {}).get("checkpoint")  # params: schema 1
        if not ckpt or not Path(ckpt).is_dir():
            continue
        for f in sorted(Path(ckpt).glob("*.json")):
            try:
                data = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(data, dict) and isinstance(data.get("history"), list) and data["history"]:
                h = pd.DataFrame(data["history"])
                h["curve"] = f"{m['name']}: {data.get('stage', f.stem)}"
                logs.append(h)
    if not logs:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.concat(logs).drop_duplicates(["curve", "step"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for curve, d in df.groupby("curve"):
        smooth = d.loss.rolling(max(1, len(d) // 50), min_periods=1).mean()
        ax.plot(d.step, smooth, label=curve, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (running mean)")
    ax.set_yscale("log")
    # plain tick labels: the default log formatter writes mathtext ($\\mathdefault{10^{0}}$), which the report's
    # literal-text setting (user strings are never mathtext) would print raw
    from matplotlib.ticker import LogFormatter

    ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig_dir.mkdir(parents=True, exist_ok=True)
    _save(fig, fig_dir / "training_loss.png", 110)
    return [{"file": "figures/training_loss.png", "caption": "Training losses read from the methods' checkpoint folders."}]


def render(run_dir: str | Path, bench: Sequence[str | Path] = ()) -> Path:
    """Write ``run_dir/index.html`` (and ``figures/``) from the store in ``run_dir``.

    Benchmark JSON (pytest-benchmark, from ``benchmarks/``) found in ``run_dir/bench/`` or given in ``bench``
    adds a latency section.
    """
    import jinja2

    run_dir = Path(run_dir)
    if not (run_dir / DB_NAME).is_file():
        raise FileNotFoundError(f"{run_dir}: no {DB_NAME} here; run `sxbench run --out {run_dir}` first")
    log.info("report: reading the store")
    with Store(run_dir) as store:
        # a NULL value is a metric that failed on that sample: NaN, left out of every mean and count (a metric whose
        # values are all NULL reads back as an object column of None)
        values = store.values().astype({"value": float})
        samples = store.samples()
        runs = store.runs()
        metric_infos = store.metrics()
        method_infos = store.methods()
        routing = store.routing()
        set_values = store.set_values()
        set_replicates = store.set_replicates()

    # one row per stored configuration: a method run with other parameters (or retrained weights) is not pooled
    labels = config_labels(method_infos, list(samples[["method", "method_config"]].drop_duplicates().itertuples(
        index=False, name=None)) if len(samples) else [])
    values, samples, routing, set_values = (_relabel(d, labels) for d in (values, samples, routing, set_values))
    last = runs.iloc[-1] if len(runs) else None
    config = json.loads(last.config) if last is not None else {}
    prov = json.loads(last.provenance) if last is not None else {}
    # the expert statistics are described in their own table (column tooltips), not among the per-sample metrics
    metric_rows = sorted((m for m in metric_infos.values() if m.get("scope") != "experts" and m["group"] != "experts"),
                         key=lambda m: (GROUP_ORDER.index(m["group"]) if m["group"] in GROUP_ORDER else 99, m["name"]))
    metric_rows = [m | _backbone_label(m.get("backbone")) for m in metric_rows]
    present = set(values.metric.unique())
    groups: dict[str, list[dict[str, Any]]] = {}
    for m in metric_rows:
        if m["name"] in present:
            groups.setdefault(m["group"], []).append(m)
    methods = sorted(samples.method.unique()) if len(samples) else []
    # controls (identity, stylecopy, any method whose info says so) are reference rows: never ranked, listed last
    controls = {label for key, label in labels.items() if is_control(method_infos.get(key, {"name": key[0]}))}
    board_methods = [m for m in methods if m not in controls] + [m for m in methods if m in controls]

    log.info("report: leaderboard intervals and rank groups (%d bootstrap replicates)", REPORT_N_BOOT)
    # the leaderboard's filters show any level × split cell: computed here, shown by the page's script
    tables = leaderboards(values, (None, "split", "level"), controls=controls)
    board, by_split, by_level = tables[None], tables["split"], tables["level"]
    level_split = {s: leaderboards(values[values.split == s], ("level",), controls=controls)["level"]
                   for s in values.split.dropna().unique()} if values.split.nunique() > 1 else {}
    filter_cells = _filter_cells(tables, level_split)
    splits = _known_first(values.split.unique(), SPLIT_ORDER)
    levels = _known_first(values.level.unique(), LEVEL_ORDER)
    novelty_gaps = _novelty_gaps(values)

    ok = samples[samples.status == "ok"]
    errors = samples[samples.status == "error"]
    imported = {labels.get(k, i["name"]): i.get("provenance", {}) | {"reference": i["reference"],
                                                                       "digest": i["params"].get("digest")}
                for k, i in method_infos.items() if i["version"] == IMPORTED_VERSION}  # `sxbench import`
    cost = []
    for (m, mc), d in ok.groupby(["method", "method_config"]):
        if m in imported:  # made outside sxbench: nothing measured
            continue
        cost.append({"method": m, "config": mc, "n": len(d), "latency_ms": 1000 * d.latency_s.median(),
                     "peak_mb": d.peak_memory_bytes.max() / 2**20, "memory_kind": d.memory_kind.iloc[0],
                     "device": d.device.iloc[0]})

    # image grid: pairs chosen exactly as the runner chose them when saving inputs
    grid = []
    refused: list[str] = []  # stored paths that point outside the run folder: never read, one warning for all
    if len(ok):
        listings: dict[Path, set[str]] = {}  # one directory read per folder, not a stat per image

        def existing(rel: str | None) -> str | None:
            if not rel:
                return None
            try:  # output paths come from the database: a crafted one must not reach other files
                path = contained(run_dir, rel)
            except UnsafePathError as exc:
                if str(exc) not in refused:  # the grid and the explorer's data ask for the same paths
                    refused.append(str(exc))
                return None
            if path.parent not in listings:
                listings[path.parent] = _file_names(path.parent)
            return rel if path.name in listings[path.parent] else None

        pair_rows = samples.drop_duplicates("pair_id")
        pairs = [PairSpec(r.pair_id, r.content_id, r.style_id, r.split, r.level, r.family,
                          existing(f"inputs/target/{stable_hash(r.pair_id, 16)}.png") is not None)
                 for r in pair_rows.itertuples()]
        seed0 = ok.seed.min()
        outputs: dict[str, dict[str, str]] = {}
        for r in ok[ok.seed == seed0].itertuples():
            outputs.setdefault(r.pair_id, {})[r.method] = r.output_path
        for p in grid_pairs(pairs):
            cells = outputs.get(p.pair_id, {})
            content, style, target = (existing(r) for r in input_paths(p.pair_id, p.content_id, p.style_id))
            grid.append({
                "pair": p, "seed": int(seed0),
                "content": content, "style": style, "target": target,
                "outputs": [existing(cells.get(m)) for m in methods],
                "thumbs": {rel: thumbnail(run_dir, rel) for rel in (content, style, target,
                                                                     *(existing(cells.get(m)) for m in methods)) if rel},
            })
    if refused:
        log.warning("report: %d stored output path(s) outside the run folder not shown; the first: %s", len(refused),
                    refused[0])

    log.info("report: per-sample data for the explorer (%d samples)", len(samples))
    metric_order = [m["name"] for ms in groups.values() for m in ms]
    explorer = write_sample_data(run_dir, samples, values, board_methods, metric_order,
                                 existing if len(ok) else (lambda rel: None))
    for m in explorer["methods"]:
        m["control"] = m["label"] in controls
    explorer["metric_info"] = [{"name": m["name"], "hib": bool(m["higher_is_better"]), "group": m["group"],
                                "description": m.get("description", "")} for ms in groups.values() for m in ms]
    explorer["levels"], explorer["splits"] = levels, splits

    infos = sorted(method_infos.values(), key=lambda m: m["name"])
    cards = _method_cards(method_infos, cost, imported, labels)
    from sxbench.report import bench as bench_lib

    bench_files = sorted((run_dir / "bench").glob("*.json")) + [Path(b) for b in bench]
    bench_rows = bench_lib.load(bench_files) if bench_files else []
    metric_info = {m["name"]: m for m in metric_rows}
    with _literal_text():  # labels are user strings: drawn as given, never as mathtext
        fid, sty = summary.primary_metric("fidelity", board), summary.primary_metric("style", board)
        headline = ("figures/headline.png" if summary.headline_figure(board, fid, sty, controls, metric_info,
                                                                      run_dir / "figures" / "headline.png") else None)
        figures = _figures(values, run_dir / "figures") if len(values) else []
        experts, expert_figs = _expert_section(routing, set_values, metric_infos, run_dir / "figures")
        summary_rows = summary.build(board, by_split, novelty_gaps, experts or ({} if len(routing) else None), cost,
                                     controls, metric_info)
        figures += expert_figs + _training_curves(infos, run_dir / "figures")
        if bench_rows and bench_lib.plot(bench_rows, run_dir / "figures" / "latency.png"):
            figures.append({"file": "figures/latency.png",
                            "caption": "Transformer step latency vs resolution (benchmarks)"})
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    from sxbench.metrics.sets import SET_N_BOOT

    replicates = {(labels.get((m, c), m), metric, subset): r for (m, c, metric, subset), r in set_replicates.items()}
    set_table = _set_table(set_values, controls=controls, replicates=replicates)
    coverage = _coverage(values, runs)
    failed_values = _failed_values(values)
    log.info("report: writing index.html")
    html = env.get_template("index.html.j2").render(
        protocol=config.get("protocol", "?"), config=config, prov=prov, runs=runs.to_dict("records"),
        groups=groups, methods=methods, board=board, by_split=by_split, by_level=by_level, splits=splits,
        levels=levels, n_samples=len(samples), n_ok=len(ok), errors=errors.head(50).to_dict("records"),
        n_errors=len(errors), cost=cost, grid=grid, figures=figures, metric_rows=metric_rows,
        method_infos=infos, experts=experts, not_computed=NOT_COMPUTED, set_table=set_table, bench_rows=bench_rows,
        skipped_metrics=prov.get("skipped_metrics", {}), input_errors=prov.get("input_errors", []),
        failed_methods=prov.get("failed_methods", {}), imported=imported, json=json, cards=cards,
        board_methods=board_methods, controls=controls, coverage=coverage, n_boot=REPORT_N_BOOT, alpha=ALPHA,
        set_n_boot=SET_N_BOOT, failed_values=failed_values, novelty_gaps=novelty_gaps, novelty_labels=NOVELTY_LABELS,
        summary=summary_rows, headline=headline, fid_metric=fid, style_metric=sty, filter_cells=filter_cells,
        explorer=explorer,
    )
    html = portable(html, run_dir)  # no folder of this machine in the page (cards, provenance, environment)
    out = run_dir / "index.html"
    from sxbench.runner import atomic_write

    atomic_write(out, lambda fh: fh.write(html.encode("utf-8")))  # a temporary file of this process, then a rename
    log.info("report written to %s", out)
    return out


def _filter_cells(tables: dict[str | None, dict[str, dict[Any, dict[str, Cell]]]],
                  level_split: dict[str, dict[str, dict[Any, dict[str, Cell]]]]) -> dict[str, Any]:
    """The leaderboard's cells for each filter setting, for the page's script: ``{subset: {metric: {method:
    [text, mean, n, bold, group, note]}}}``; subsets ``all``, ``split=S``, ``level=L`` and ``level=L&split=S``
    (``level_split``: per split, its by-level table)."""
    def pack(c: Cell | None) -> list[Any] | None:
        if c is None:
            return None
        mean = c.mean if math.isfinite(c.mean) else None
        return [c.text, mean, c.n, bool(c.best), c.group, c.note]

    out: dict[str, Any] = {}
    named = [(tables.get(None, {}), lambda c: "all"), (tables.get("split", {}), lambda c: f"split={c}"),
             (tables.get("level", {}), lambda c: f"level={c}")]
    named += [(t, functools.partial(lambda s, c: f"level={c}&split={s}", s)) for s, t in level_split.items()]
    for table, key in named:
        for metric, columns in table.items():
            for column, cells in columns.items():
                out.setdefault(key(column), {})[metric] = {m: pack(c) for m, c in cells.items()}
    return out


def _coverage(values: pd.DataFrame, runs: pd.DataFrame) -> dict[str, Any]:
    """What the leaderboard covers, from the values actually stored (a store pools every invocation that wrote to
    it): ``{"pairs", "seeds", "protocols", "invocations": [{seeds, limit, n_pairs, protocol, count}]}``; ``pairs``
    and ``seeds`` count pairs and seeds with at least one non-failed value, ``invocations`` the distinct
    (protocol, seeds, ``--limit``, pairs selected) of the runs table, in order of first use."""
    ok = values[values.value.notna()] if len(values) else values
    unit = [c for c in ("protocol", "pair_id") if c in ok.columns]
    invocations: dict[tuple, dict[str, Any]] = {}
    for c in runs.config if len(runs) else []:
        try:
            config = json.loads(c) if isinstance(c, str) else {}
        except json.JSONDecodeError:
            config = {}
        seeds = tuple(config.get("seeds") or ())
        key = (config.get("protocol"), seeds, config.get("limit"), config.get("n_pairs"))
        entry = invocations.setdefault(key, {"protocol": key[0], "seeds": list(seeds), "limit": key[2],
                                             "n_pairs": key[3], "count": 0})
        entry["count"] += 1
    return {"pairs": len(ok[unit].drop_duplicates()) if len(ok) and unit else 0,
            "seeds": sorted(int(x) for x in ok.seed.dropna().unique()) if len(ok) else [],
            "protocols": sorted(str(x) for x in ok.protocol.dropna().unique()) if "protocol" in ok.columns else [],
            "invocations": list(invocations.values())}


def _file_names(folder: Path) -> set[str]:
    """Names of the files in ``folder``; empty where it does not exist."""
    try:
        with os.scandir(folder) as entries:
            return {e.name for e in entries if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _checksums(params: dict[str, Any], prefix: str = "", listed: bool = False) -> dict[str, str]:
    """Every ``*sha256`` / ``digest`` value in ``params``, at any depth, keyed by its dotted path; every value of a
    dict whose key ends in ``sha256`` (``{backbone: sha256}``) is ``listed``. Empty ones read "unverified"."""
    out: dict[str, str] = {}
    for k, v in params.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _checksums(v, f"{path}.", k.endswith("sha256"))
        elif listed or k.endswith("sha256") or k == "digest":
            out[path] = str(v)[:16] if v else "unverified"
    return out


def _method_cards(method_infos: dict[tuple[str, str], dict[str, Any]], cost: list[dict[str, Any]],
                  imported: dict[str, dict[str, Any]], labels: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    """One card per stored method configuration (named by ``labels``, from ``config_labels``): reference,
    licences, weights checksums, parameters, measured seconds per image (median over this store's samples of that
    configuration), the command that reproduces trained weights and the checkpoint folder they were read from.
    The last two are ``provenance``; stores written before it existed hold them in ``params``, read as a fallback."""
    latency = {(c["method"], c["config"]): (c["latency_ms"] / 1000.0, c["device"]) for c in cost}
    legacy = ("checkpoint", "reproduce")  # provenance kept in params before MethodInfo.provenance
    cards = []
    for (name, config), m in sorted(method_infos.items()):
        raw = m.get("params", {})
        prov = {k: raw[k] for k in legacy if k in raw} | m.get("provenance", {})
        flat = _checksums(raw)
        params = {k: v for k, v in raw.items() if k not in legacy and not (k.endswith("sha256") or k == "digest")}
        label = labels.get((name, config), name)  # configurations without samples: the plain name
        s, dev = latency.get((label, config), (None, None))
        cards.append({"name": label, "version": m["version"], "reference": m.get("reference", ""),
                      "licence": m.get("licence") or ("see the reference" if label in imported else "not recorded"),
                      "checksums": flat, "params": params, "s_per_image": s, "device": dev,
                      "reproduce": prov.get("reproduce"), "checkpoint": _display_path(prov.get("checkpoint")),
                      "imported": label in imported})
    return cards


def _display_path(path: str | None) -> str | None:
    """A stored absolute path as a reader elsewhere can use it: relative to the import root it lies under (a
    packaged checkpoint reads ``styleexpert/checkpoints/…``), else as stored (``portable`` then shortens the home
    and run folders)."""
    if not path or not os.path.isabs(path):
        return path
    import sys

    roots = {p for p in sys.path if p and os.path.isabs(p)}
    for name, module in list(sys.modules.items()):  # editable installs import from a root not on sys.path
        file = getattr(module, "__file__", None)
        if "." not in name and file and os.path.basename(file) == "__init__.py":
            roots.add(os.path.dirname(os.path.dirname(file)))
    for root in sorted(roots, key=len, reverse=True):
        if root != os.sep and path.startswith(root.rstrip(os.sep) + os.sep) and os.path.isdir(root):
            return os.path.relpath(path, root)
    return path


def _min_samples(metrics: Iterable[str]) -> dict[str, int]:
    """Each set metric's ``min_samples`` (below it the evaluator stores no value), read from its registered class;
    a metric this installation cannot load is left out."""
    from sxbench import registry

    out = {}
    for name in metrics:
        try:
            n = getattr(registry.metrics.get(name), "min_samples", None)
        except Exception as exc:  # a plugin that is not installed (or fails to import) must not stop the report
            log.debug("report: no min_samples for set metric %s: %s", name, exc)
            continue
        if isinstance(n, int):
            out[name] = n
    return out


def _set_table(sv: pd.DataFrame, min_samples: dict[str, int] | None = None, *, controls: Iterable[str] = (),
               replicates: dict[tuple[str, str, str], np.ndarray] | None = None) -> dict[str, Any] | None:
    """Set metric values as ``{"columns": [{metric, subset, hib, min_n}], "rows": {method: [cell]}}``, a cell being
    ``{value, n, n_ref, ci_low, ci_high, std, too_small, best}``; the expert statistics (group ``experts``) have their
    own table.

    ``too_small``: fewer outputs or distinct references than the metric's ``min_samples`` (where unknown, a stored
    value of NULL, which the evaluator writes for such sets). ``best``: the column's best value among the methods that
    are not ``controls``, marked only when its paired bootstrap difference from every other such method excludes 0
    (``replicates``, ``(method label, metric, subset) → (B,)``, paired when their ``boot`` is the same; a method
    without replicates, or with other draws, leaves the column without a best)."""
    if len(sv):
        sv = sv[sv.metric_group != "experts"]
    if not len(sv):
        return None
    from sxbench.metrics.sets import percentile_interval

    controls, replicates = set(controls), replicates or {}
    min_samples = _min_samples(sorted(sv.metric.unique())) if min_samples is None else min_samples
    cols = sorted({(r.metric, r.subset, bool(r.higher_is_better)) for r in sv.itertuples()},
                  key=lambda c: (c[0], c[1] != "all", c[1]))
    first: dict[tuple[str, str, str], Any] = {}  # (metric, subset, method) → its stored row (the first, as stored)
    for r in sv.itertuples():
        first.setdefault((r.metric, r.subset, r.method), r)

    def num(row: Any, name: str) -> float | None:
        v = getattr(row, name, None)
        return float(v) if v is not None and pd.notna(v) else None

    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in sorted(sv.method.unique())}
    for metric, subset, hib in cols:
        floor = min_samples.get(metric)
        cells = {}
        for method in rows:
            hit = first.get((metric, subset, method))
            v = num(hit, "value")
            n, n_ref = (int(hit.n) if hit is not None else 0), (num(hit, "n_ref") if hit is not None else None)
            too_small = hit is not None and (min(n, n_ref if n_ref is not None else n) < floor if floor is not None
                                             else v is None)
            cells[method] = {"value": None if too_small else v, "n": n,
                             "n_ref": int(n_ref) if n_ref is not None else None,
                             "ci_low": None if too_small else num(hit, "ci_low"),
                             "ci_high": None if too_small else num(hit, "ci_high"),
                             "std": None if too_small else num(hit, "std"), "too_small": too_small, "best": False,
                             "boot": getattr(hit, "boot", None) if hit is not None else None}
        ranked = [m for m in rows if m not in controls and cells[m]["value"] is not None]
        if len(ranked) >= 2:
            best = (max if hib else min)(ranked, key=lambda m: cells[m]["value"])
            rb = replicates.get((best, metric, subset))

            def beats(other: str) -> bool:
                ro = replicates.get((other, metric, subset))
                if rb is None or ro is None or cells[other]["boot"] != cells[best]["boot"] or len(ro) != len(rb):
                    return False
                lo, hi = percentile_interval(cells[best]["value"] - cells[other]["value"], rb - ro)
                return lo is not None and (lo > 0 if hib else hi < 0)

            cells[best]["best"] = all(beats(o) for o in ranked if o != best)
        for method in rows:
            rows[method].append(cells[method])
    return {"columns": [{"metric": m, "subset": s, "hib": h, "min_n": min_samples.get(m)} for m, s, h in cols],
            "rows": rows}


def export(run_dir: str | Path, fmt: str = "csv", output: str | Path | None = None) -> Path:
    """Write the long-format results table (one value per row) as CSV or Parquet. ``scope`` tells the rows
    apart: ``sample`` (one output), ``set`` (a method's outputs over a subset, ``split`` the subset) and ``experts``
    (a mixture method's expert statistics, ``split`` ``all``); ``n`` is how many outputs (styles, for experts).
    Set rows also have ``n_ref`` (distinct references), ``ci_low``/``ci_high`` (95%, style-cluster bootstrap) and
    ``std`` (KID's spread over subsets). A metric that failed on a sample has an empty ``value``. In CSV, a text
    cell a spreadsheet would run as a formula (``=cmd()``, see ``FORMULA_PREFIXES``) starts with a ``'``; Parquet keeps every value exact."""
    run_dir = Path(run_dir)
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"format must be csv or parquet, got {fmt!r}")
    if not (run_dir / DB_NAME).is_file():
        raise FileNotFoundError(f"{run_dir}: no {DB_NAME} here; run `sxbench run --out {run_dir}` first")
    with Store(run_dir) as store:
        df = store.values().astype({"value": float}).assign(scope="sample")
        sv = store.set_values()
    if len(sv):  # set metrics and expert statistics: one row per (method, subset), sample columns empty
        sets = sv.rename(columns={"subset": "split"}).assign(
            scope=np.where(sv.metric_group == "experts", "experts", "set"),
            split=lambda d: d.split.str.removeprefix("split="),
            metric_version=sv.version, higher_is_better=sv.higher_is_better.astype(bool))
        df = pd.concat([df, sets[[c for c in ("method", "method_config", "split", "metric", "value", "higher_is_better",
                                              "metric_group", "metric_version", "backbone", "scope", "n", "n_ref",
                                              "ci_low", "ci_high", "std")
                                  if c in sets.columns]]], ignore_index=True)
    out = Path(output) if output else run_dir / f"results.{fmt}"
    out.parent.mkdir(parents=True, exist_ok=True)
    defused(df).to_csv(out, index=False) if fmt == "csv" else df.to_parquet(out, index=False)
    return out


def defused(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every text cell that starts with one of ``FORMULA_PREFIXES`` prefixed by ``'`` (OWASP's advice
    against CSV injection: ids come from user manifests); numeric and boolean columns are left as they are, so a
    negative number stays a number."""
    def defuse(v: Any) -> Any:
        return "'" + v if isinstance(v, str) and v.startswith(FORMULA_PREFIXES) else v

    text = [c for c in df.columns if df[c].dtype == object or pd.api.types.is_string_dtype(df[c])]
    return df.assign(**{c: df[c].map(defuse) for c in text}) if text else df


__all__ = ["ALPHA", "Cell", "LEGACY_CONTROLS", "REPORT_N_BOOT", "config_labels", "defused", "export", "grid_pairs",
           "is_control", "leaderboard", "leaderboards", "mean_ci", "rank_groups", "render"]
