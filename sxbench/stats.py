"""Uncertainty for per-sample metrics: per-method intervals and paired method differences, clustered by style and
content.

Why clustered. A protocol reuses its styles and its contents: ``synth`` shows each of its 56 styles with 4
contents, and each of its 40 contents recurs in 5–6 pairs. Two outputs of one style share whatever that style does
to a method, so the pairs are not independent and a per-sample interval is too narrow (by up to √(1 + 3ρ) for an
intra-style correlation ρ). Here the data are treated as a two-way crossed design (styles × contents) and the
uncertainty is that of drawing other styles and other contents.

Unit of analysis. First each method's values are averaged per pair over seeds (``seed_means``; failed values, NaN,
are left out of the average): a deterministic method run with ``--seeds 0,1`` contributes one value per pair, not
two identical ones, and a stochastic method's seed-mean is its value for that pair. A pair is then one unit,
clustered by its ``style_id`` and its ``content_id``. A paired difference uses the pairs both methods have after
the averaging; ``n`` counts them.

Scheme (``cluster_bootstrap``). Each replicate draws the styles with replacement and the contents with replacement,
independently (Owen 2007, the "pigeonhole" bootstrap). Owen weights each unit by (times its style was drawn) ×
(times its content was drawn); that product bootstrap errs on the conservative side: to first order its
variance is about V_style + V_content + V_cell where the truth is about V_style + V_content − V_cell, V_cell being
the variance an unclustered per-pair bootstrap would give. In ``synth``'s sparse design, where every (style,
content) cell holds one pair, the excess 2·V_cell is large: in the calibration of ``tests/test_stats.py`` Owen's
95% percentile interval covered the truth in 98.0–98.5% of simulated datasets and was ~24% wider than needed. The
default scheme, ``"multiway"``, therefore uses the same style and content draws one dimension at a time and combines
the one-way cluster bootstraps by inclusion–exclusion, as Cameron, Gelbach & Miller (2011) combine one-way
cluster-robust variances:

    V = c_S·Var*(style) + c_C·Var*(content) − c_I·Var*(style ∩ content)

where Var*(style) is the variance of the estimate over replicates weighted by the style draws alone (a one-way cluster
bootstrap), likewise for contents, and Var*(style ∩ content) resamples the (style, content) cells (the pairs, in
``synth``); c_G = G/(G − 1) is the usual small-sample factor for G clusters. The interval is
``estimate ± t(0.975, G_min − 1)·√V`` with G_min the smaller number of clusters, as CGM recommend, and the p-value
is the two-sided t tail at the same degrees of freedom, so p < 0.05 exactly when the 95% interval excludes 0. With
the default 2000 replicates this calibrates (94.6–95.2% coverage in the test) where Owen's percentile interval
over-covers and a per-sample t-interval under-covers (72–75%). Special cases: if V ≤ 0 (possible, as CGM note) the
larger one-way variance is used; a dimension with a single cluster (one content for every style) is constant in the
data, so inference is conditional on it and only the other dimension is resampled; with a single cluster in both,
or fewer than two units, there is no interval (NaN).

Implementation. Draws are count matrices (B × G) from a seeded ``numpy.random.Generator`` (one child stream per
dimension, so results depend only on ``seed`` and the number of clusters); a replicate's weighted mean is
``(counts @ cluster sums) / (counts @ cluster sizes)``: one matrix product per dimension for all statistics that
share a design at once (Owen's product weights are indexed per unit, (B × n), in chunks). Defaults
``N_BOOT = 2000``, ``SEED = 0``: the same values give the same intervals.

Holm (1979) adjusts the p-values across methods within each (metric, level, split).

Gaps between groups of pairs (``split_gap``). A gap, e.g. mean(new family) − mean(seen), compares two groups of
pairs that share contents (and, for ``new_range``, families): a replicate must draw both groups from the same style
and content draws, so a content that recurs in both cancels out. The gap is a difference of two ratio means, not a
mean of one value per pair, so ``cluster_bootstrap`` takes its linearization (the delta method): a unit of group a
gets g − (n/n_a)(x − mean_a), one of group b g + (n/n_b)(x − mean_b), with g the gap and n = n_a + n_b. Their mean
is g exactly, and a replicate's weighted mean of them is, to first order, the gap computed within that replicate
from both groups; so the variance and its combination are the same code as every other interval here, and no
replicate is lost where it happens to draw no style of a small group (an exact replicate gap would be undefined
there). One change: the t quantile's degrees of freedom are the fewest clusters (styles or contents) of either group
less one, not the whole design's, because the gap's variance comes mostly from the smaller group's few styles. In a
``synth``-like simulation (56 styles, 40 contents, 4 pairs a style; 8 new-family and 16 new-range styles; style,
content and pair effects; 1000 datasets) the design's degrees of freedom (39) covered the true gap in 91% (new
family) and 93% (new range) of datasets, these (7 and 15) in 95.0–96.1% and 94.7–95.1% (two seeds).

Sign convention: ``diff`` = method − against, in the metric's own units. Whether that is better or worse is the
metric's ``higher_is_better``, read separately.

References:
    Owen, A. B. (2007). The pigeonhole bootstrap. Annals of Applied Statistics 1(2), 386–411.
    Cameron, A. C., Gelbach, J. B. & Miller, D. L. (2011). Robust inference with multiway clustering. Journal of
        Business & Economic Statistics 29(2), 238–249.
    Holm, S. (1979). A simple sequentially rejective multiple test procedure. Scandinavian Journal of Statistics
        6(2), 65–70.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

N_BOOT = 2000
"""Bootstrap replicates by default."""
SEED = 0
"""Seed of the bootstrap draws by default (results are reproducible)."""
CONFIDENCE = 0.95
"""Two-sided coverage of the intervals by default."""
SCHEMES = ("multiway", "pigeonhole")
"""``multiway``: CGM inclusion–exclusion of one-way cluster bootstraps, t interval (the default, calibrated);
``pigeonhole``: Owen's product-weight bootstrap with a percentile interval (conservative; kept for comparison)."""
DIFF_COLUMNS = ("method", "against", "metric", "level", "split", "n", "diff", "ci_low", "ci_high", "p_holm", "p")
"""Columns of ``paired_differences``."""
CI_COLUMNS = ("method", "metric", "level", "split", "n", "mean", "ci_low", "ci_high")
"""Columns of ``method_ci``."""
GAP_COLUMNS = ("method", "metric", "group", "n_a", "n_b", "mean_a", "mean_b", "gap", "ci_low", "ci_high")
"""Columns of ``split_gap``."""
SEEN, UNSEEN = "seen", "unseen"
"""The ``split`` values ``novelty`` reads."""
NEW_FAMILY, NEW_RANGE = "new_family", "new_range"
"""``novelty`` of an unseen pair whose family has no seen pair / has one (a held-out parameter range)."""
NOVELTY = (SEEN, NEW_FAMILY, NEW_RANGE)
"""The values of ``novelty`` (besides ``None``)."""
ALL = "all"
"""``level`` / ``split`` of a row that pools every level / split."""
_UNIT = ("protocol", "pair_id")
"""What identifies a pair (``protocol`` where the values have it: two protocols may reuse a pair id)."""
_CHUNK = 1 << 22
"""Count-matrix entries drawn at a time (bounds memory for designs with many clusters)."""


@dataclass(frozen=True)
class ClusterCI:
    """``cluster_bootstrap``'s result for k statistics on one design; every array has shape (k,), float64."""

    estimate: np.ndarray
    """Mean over the units."""
    se: np.ndarray
    """Bootstrap standard error (``multiway``) or the replicates' standard deviation (``pigeonhole``)."""
    ci_low: np.ndarray
    """Lower end of the interval; NaN where there is none."""
    ci_high: np.ndarray
    """Upper end of the interval."""
    p: np.ndarray
    """Two-sided p-value of estimate = 0."""
    df: int
    """Degrees of freedom of the t quantile (smaller cluster count − 1); 0 where there is no interval."""


def cluster_bootstrap(values: np.ndarray, style: Sequence[Any], content: Sequence[Any], *, n_boot: int = N_BOOT,
                      seed: int = SEED, confidence: float = CONFIDENCE, scheme: str = "multiway") -> ClusterCI:
    """Mean of each row of ``values`` with a two-way (style × content) cluster bootstrap interval (module docstring).

    Args:
        values: (n,) or (k, n) float array, no NaN: k statistics (e.g. several methods' differences) on the same n
            units (pairs).
        style: n style labels (any hashable), one per unit.
        content: n content labels.
        n_boot: replicates B.
        seed: seed of the draws; the same seed, values and labels give the same result.
        confidence: two-sided coverage, in (0, 1).
        scheme: ``multiway`` (default) or ``pigeonhole`` (``SCHEMES``).
    """
    from scipy import stats

    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    x = np.atleast_2d(np.asarray(values, dtype=np.float64))
    k, n = x.shape
    if len(style) != n or len(content) != n:
        raise ValueError(f"values has {n} units but {len(style)} style and {len(content)} content labels")
    if np.isnan(x).any():
        raise ValueError("values hold NaN: drop failed values (or units) before the bootstrap")
    nan = np.full(k, np.nan)
    estimate = x.mean(axis=1) if n else nan
    s_code = _codes(style)
    c_code = _codes(content)
    g_s, g_c = int(s_code.max(initial=-1)) + 1, int(c_code.max(initial=-1)) + 1
    if n < 2 or max(g_s, g_c) < 2:
        return ClusterCI(estimate, nan, nan, nan, nan, 0)
    alpha = 1.0 - confidence
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]

    if scheme == "pigeonhole":
        if min(g_s, g_c) < 2:  # a constant dimension: resample the other alone
            code, g, rng = (s_code, g_s, streams[0]) if g_s > 1 else (c_code, g_c, streams[1])
            reps = _replicates(x, code, g, n_boot, rng)
        else:
            reps = _product_replicates(x, s_code, c_code, g_s, g_c, n_boot, streams[0], streams[1])
        quantile = np.nanpercentile if np.isnan(reps).any() else np.percentile
        lo, hi = quantile(reps, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=1)
        valid = (~np.isnan(reps)).sum(axis=1)
        tail = np.minimum((reps <= 0).sum(axis=1), (reps >= 0).sum(axis=1)) / valid
        constant = np.nanmax(reps, axis=1) == np.nanmin(reps, axis=1)
        p = np.where(constant, (estimate == 0).astype(float), np.minimum(1.0, 2 * tail))
        return ClusterCI(estimate, np.nanstd(reps, axis=1, ddof=1), lo, hi, p, max(1, min(g_s, g_c) - 1))

    def variance(code: np.ndarray, g: int, rng: np.random.Generator) -> np.ndarray:
        return _replicates(x, code, g, n_boot, rng).var(axis=1, ddof=1) * g / (g - 1)

    if min(g_s, g_c) < 2:
        code, g, rng = (s_code, g_s, streams[0]) if g_s > 1 else (c_code, g_c, streams[1])
        var, df = variance(code, g, rng), g - 1
    else:
        v_s, v_c = variance(s_code, g_s, streams[0]), variance(c_code, g_c, streams[1])
        cell = _codes(list(zip(s_code.tolist(), c_code.tolist())))
        g_i = int(cell.max()) + 1
        v_i = variance(cell, g_i, streams[2]) if g_i > 1 else np.zeros(k)
        var = v_s + v_c - v_i
        var = np.where(var > 0, var, np.maximum(v_s, v_c))  # CGM's estimate can be ≤ 0
        df = min(g_s, g_c) - 1
    se = np.sqrt(var)
    half = stats.t.ppf(1 - alpha / 2, df) * se
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.abs(estimate) / se
    # se == 0: every replicate equals the estimate (identical methods: difference exactly 0, p = 1)
    p = np.where(se > 0, 2 * stats.t.sf(t, df), (estimate == 0).astype(float))
    return ClusterCI(estimate, se, estimate - half, estimate + half, p, df)


def _codes(labels: Sequence[Any]) -> np.ndarray:
    """Integer codes 0..G−1 of ``labels`` in sorted label order (NaN labels are one cluster)."""
    codes, _ = pd.factorize(pd.Series(list(labels), dtype=object), sort=True, use_na_sentinel=False)
    return np.asarray(codes, dtype=np.intp)


def _draws(g: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """(rows × g) counts: how often each of g clusters is drawn when g are drawn with replacement."""
    return rng.multinomial(g, np.full(g, 1.0 / g), size=rows).astype(np.float64)


def _replicates(x: np.ndarray, code: np.ndarray, g: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(k × B) replicate means of the rows of ``x`` (k × n) when the g clusters ``code`` are resampled: a unit's
    weight is its cluster's count, so a replicate is (counts @ cluster sums) / (counts @ cluster sizes)."""
    sums = _cluster_sums(x, code)
    sizes = np.bincount(code, minlength=g).astype(np.float64)
    step = max(1, _CHUNK // g)
    out = []
    for start in range(0, n_boot, step):
        counts = _draws(g, min(step, n_boot - start), rng)
        out.append((counts @ sums) / (counts @ sizes)[:, None])
    return np.concatenate(out).T


def _cluster_sums(x: np.ndarray, code: np.ndarray) -> np.ndarray:
    """(g × k) sums of the rows of ``x`` (k × n) over each cluster of ``code`` (codes 0..g−1, none empty)."""
    order = np.argsort(code, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(code[order]) != 0])
    return np.add.reduceat(x[:, order], starts, axis=1).T


def _product_replicates(x: np.ndarray, s_code: np.ndarray, c_code: np.ndarray, g_s: int, g_c: int, n_boot: int,
                        rng_s: np.random.Generator, rng_c: np.random.Generator) -> np.ndarray:
    """(k × B) replicates of Owen's pigeonhole bootstrap: a unit's weight is its style's count × its content's
    count, indexed per unit from the (B × G) count matrices; NaN for a replicate in which no unit has weight
    (possible in a sparse design)."""
    s, c = _draws(g_s, n_boot, rng_s), _draws(g_c, n_boot, rng_c)
    step = max(1, _CHUNK // x.shape[1])
    out = []
    for start in range(0, n_boot, step):
        w = s[start:start + step, s_code] * c[start:start + step, c_code]  # (chunk × n)
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append((x @ w.T) / w.sum(axis=1))
    return np.concatenate(out, axis=1)


def holm(p: Iterable[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as ``p``; NaN stays NaN and does not count as a test)."""
    p = np.asarray(list(p), dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if not m:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def seed_means(values: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, metric, pair) with ``value`` the mean over its seeds of the non-NaN values (a pair
    whose every value failed is dropped) and ``n_seeds`` how many seeds that mean covers. Keeps ``style_id``,
    ``content_id``, ``level``, ``split`` (and ``higher_is_better`` where present)."""
    unit = [c for c in _UNIT if c in values.columns]
    keep = [c for c in ("style_id", "content_id", "level", "split", "higher_is_better") if c in values.columns]
    ok = values[values.value.notna()]
    if ok.empty:
        return pd.DataFrame(columns=["method", "metric", *unit, *keep, "value", "n_seeds"])
    g = ok.astype({"value": np.float64}).groupby(["method", "metric", *unit], sort=True, dropna=False)
    out = g[keep].first() if keep else None
    means = g.value.agg(value="mean", n_seeds="count")
    return (means if out is None else out.join(means)).reset_index()


def _check(values: pd.DataFrame, column: str, wanted: str | None, what: str) -> None:
    """``ValueError`` naming the known values when ``wanted`` is not among ``values[column]``."""
    if wanted is None:
        return
    known = sorted({str(v) for v in values[column].dropna().unique()})
    if wanted not in known:
        close = difflib.get_close_matches(wanted, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown {what} {wanted!r}{hint}; known {what}s: {', '.join(known) or '(none)'}")


def _select(values: pd.DataFrame, metric: str | None, level: str | None, split: str | None) -> pd.DataFrame:
    for column, wanted in (("metric", metric), ("level", level), ("split", split)):
        _check(values, column, wanted, column)
    keep = np.ones(len(values), dtype=bool)
    for column, wanted in (("metric", metric), ("level", level), ("split", split)):
        if wanted is not None:
            keep &= (values[column] == wanted).to_numpy()
    return values[keep]


def _columns(means: pd.DataFrame, level: str | None, split: str | None, by: str | None):
    """``(level, split, rows)`` for each table column: the filters (or ``"all"``), or each value of ``by``."""
    if by not in (None, "level", "split"):
        raise ValueError(f"by must be None, 'level' or 'split', got {by!r}")
    fixed = {"level": level or ALL, "split": split or ALL}
    if by is None:
        yield fixed["level"], fixed["split"], means
        return
    for value, rows in means.groupby(by, sort=True, dropna=False):
        yield (value, fixed["split"], rows) if by == "level" else (fixed["level"], value, rows)


def _units(rows: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Methods as columns and units (pairs) as rows, with each unit's style and content labels."""
    unit = [c for c in _UNIT if c in rows.columns]
    wide = rows.pivot(index=unit, columns="method", values="value")
    labels = rows.drop_duplicates(unit).set_index(unit).reindex(wide.index)
    return wide, labels.style_id.to_numpy(dtype=object), labels.content_id.to_numpy(dtype=object)


def method_ci(values: pd.DataFrame, metric: str | None = None, level: str | None = None, split: str | None = None,
              by: str | None = None, *, n_boot: int = N_BOOT, seed: int = SEED,
              confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Each method's mean with a two-way cluster bootstrap interval (module docstring), per metric.

    Args:
        values: long format as ``Store.values()`` gives it (columns method, metric, pair_id, style_id, content_id,
            level, split, seed, value; NaN = failed). Several configurations of one method: give them distinct
            ``method`` labels first (the report's ``config_labels``), else they are pooled.
        metric, level, split: keep only these values (``None``: all; ``level``/``split`` read ``"all"``).
        by: ``"level"`` or ``"split"``: one row per value of that column too.
        n_boot, seed, confidence: of the bootstrap.

    Returns:
        Columns ``CI_COLUMNS``: n is the number of pairs (seeds averaged), mean in the metric's units.
    """
    means = seed_means(_select(values, metric, level, split))
    rows = []
    for m, per_metric in means.groupby("metric", sort=True):
        for lv, sp, part in _columns(per_metric, level, split, by):
            wide, style, content = _units(part)
            methods = sorted(part.method.unique())
            for mask, group in _by_mask(wide, methods):
                ci = cluster_bootstrap(wide.loc[mask, group].to_numpy().T, style[mask], content[mask],
                                       n_boot=n_boot, seed=seed, confidence=confidence)
                rows += [(name, m, lv, sp, int(mask.sum()), ci.estimate[j], ci.ci_low[j], ci.ci_high[j])
                         for j, name in enumerate(group)]
    out = pd.DataFrame(rows, columns=list(CI_COLUMNS))
    return out.sort_values(["metric", "level", "split", "method"], kind="stable", ignore_index=True)


def _by_mask(wide: pd.DataFrame, methods: Sequence[str], against: str | None = None):
    """``(unit mask, methods)`` groups: methods whose units with a value (and, with ``against``, a value of
    ``against`` too) are the same share one bootstrap call."""
    base = wide[against].notna().to_numpy() if against is not None else np.ones(len(wide), dtype=bool)
    groups: dict[bytes, tuple[np.ndarray, list[str]]] = {}
    for name in methods:
        mask = base & wide[name].notna().to_numpy()
        groups.setdefault(mask.tobytes(), (mask, []))[1].append(name)
    return groups.values()


def paired_differences(values: pd.DataFrame, against: str, metric: str | None = None, level: str | None = None,
                       split: str | None = None, by: str | None = None, *, n_boot: int = N_BOOT, seed: int = SEED,
                       confidence: float = CONFIDENCE) -> pd.DataFrame:
    """For each method other than ``against`` and each metric: the mean paired difference (method − against) over
    the pairs both have after averaging seeds, with a two-way cluster bootstrap interval and p-value (module
    docstring), and Holm-adjusted p-values across methods within each (metric, level, split).

    Args:
        values: long format as for ``method_ci``.
        against: the reference method.
        metric, level, split: keep only these values (``None``: all; ``level``/``split`` read ``"all"``).
        by: ``"level"`` or ``"split"``: one row per value of that column too (Holm within each).
        n_boot, seed, confidence: of the bootstrap.

    Returns:
        Columns ``DIFF_COLUMNS``: ``diff`` = method − against in the metric's own units (its direction is the
        metric's ``higher_is_better``), ``n`` the pairs compared (0, with NaN, where the two share none), ``p_holm``
        the adjusted and ``p`` the unadjusted two-sided p-value.

    Raises:
        ValueError: ``against``, ``metric``, ``level`` or ``split`` is not in ``values`` (the message names the
            known ones).
    """
    _check(values, "method", against, "method")
    means = seed_means(_select(values, metric, level, split))
    rows = []
    for m, per_metric in means.groupby("metric", sort=True):
        for lv, sp, part in _columns(per_metric, level, split, by):
            methods = sorted(set(part.method.unique()) - {against})
            if against not in set(part.method):
                rows += [(name, against, m, lv, sp, 0, math.nan, math.nan, math.nan, math.nan) for name in methods]
                continue
            wide, style, content = _units(part)
            for mask, group in _by_mask(wide, methods, against):
                d = wide.loc[mask, group].to_numpy().T - wide.loc[mask, against].to_numpy()
                ci = cluster_bootstrap(d, style[mask], content[mask], n_boot=n_boot, seed=seed,
                                       confidence=confidence)
                rows += [(name, against, m, lv, sp, int(mask.sum()), ci.estimate[j], ci.ci_low[j], ci.ci_high[j],
                          ci.p[j]) for j, name in enumerate(group)]
    out = pd.DataFrame(rows, columns=[c for c in DIFF_COLUMNS if c != "p_holm"])
    out = out.sort_values(["metric", "level", "split", "method"], kind="stable", ignore_index=True)
    out["p_holm"] = np.nan
    for _, idx in out.groupby(["metric", "level", "split"], sort=False, dropna=False).indices.items():
        out.loc[out.index[idx], "p_holm"] = holm(out.p.to_numpy()[idx])
    return out[list(DIFF_COLUMNS)].astype({"n": int})


def novelty(values: pd.DataFrame) -> pd.Series:
    """What kind of novelty each row's pair is, from the data alone: ``"seen"`` for a seen pair; for an unseen pair
    ``"new_family"`` where its ``family`` has no seen pair among the rows of its protocol (a held-out family, e.g.
    ``synth``'s ``gradient_map``), else ``"new_range"`` (a seen family's held-out parameter range); ``None`` for an
    unseen pair without a family (empty or missing: left in the pooled ``unseen`` only) and for any other split.

    Args:
        values: long format as ``Store.values()`` gives it (columns split, family and, where present, protocol).
            Pass every pair of the run, whichever method or metric, failed values included: a family counts as seen
            when any of its pairs is.

    Returns:
        An object Series aligned with ``values.index``.

    Raises:
        ValueError: ``values`` has no ``split`` or no ``family`` column.
    """
    missing = [c for c in ("split", "family") if c not in values.columns]
    if missing:
        raise ValueError(f"novelty needs the columns split and family; values has no {', '.join(missing)} "
                         "(read them with Store.values())")
    family = values.family.where(values.family.notna() & (values.family.astype(str) != ""), None)
    scope = values.protocol.astype(object).where(values.protocol.notna(), "") if "protocol" in values.columns \
        else pd.Series("", index=values.index, dtype=object)
    seen = values.split == SEEN
    seen_families = set(zip(scope[seen & family.notna()], family[seen & family.notna()]))
    known = pd.Series([(p, f) in seen_families for p, f in zip(scope, family)], index=values.index, dtype=bool)
    out = pd.Series([None] * len(values), index=values.index, dtype=object)
    out[seen] = SEEN
    unseen = (values.split == UNSEEN) & family.notna()
    out[unseen & known] = NEW_RANGE
    out[unseen & ~known] = NEW_FAMILY
    return out


def split_gap(values: pd.DataFrame, metric: str | None = None, a: str = SEEN,
              b: str | Sequence[str] = (NEW_FAMILY, NEW_RANGE), *, by: str = "novelty", n_boot: int = N_BOOT,
              seed: int = SEED, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """For each method, metric and group ``b``: the gap mean(b) − mean(a) between two groups of pairs (by default
    each kind of unseen pair minus the seen ones) with a two-way cluster bootstrap interval (module docstring: the
    same draws for both groups, through the gap's linearization).

    Args:
        values: long format as for ``method_ci``, with a column ``by``; ``by="novelty"`` is computed by ``novelty``
            where ``values`` has no such column (pass all the run's pairs, so that a family's seen pairs are known).
        metric: keep only this metric (``None``: all).
        a: the reference group (a value of ``by``).
        b: one group or several (one row each).
        by: the column whose values are the groups; a pair is in one group (the first row of a pair decides).
        n_boot, seed, confidence: of the bootstrap.

    Returns:
        Columns ``GAP_COLUMNS``: ``group`` is the ``b`` group, ``n_a``/``n_b`` the pairs of each group the method has a
        value for (seeds averaged), ``gap`` = ``mean_b`` − ``mean_a`` in the metric's units (its direction is the
        metric's ``higher_is_better``); NaN where either group is empty, no interval where there are too few
        clusters.

    Raises:
        ValueError: ``metric``, ``a`` or a ``b`` group is not in ``values`` (the message names the known ones).
    """
    from scipy import stats

    groups = [b] if isinstance(b, str) else list(b)
    if by not in values.columns:
        if by != "novelty":
            raise ValueError(f"values has no column {by!r}; known columns: {', '.join(map(str, values.columns))}")
        values = values.assign(novelty=novelty(values))
    for g in (a, *groups):
        _check(values, by, g, by)
    unit = [c for c in _UNIT if c in values.columns]
    group_of = values.drop_duplicates(unit).set_index(unit)[by]
    means = seed_means(_select(values, metric, None, None))
    if by not in means.columns:  # seed_means keeps split and level, not other columns
        means = means.join(group_of, on=unit)
    rows = []
    for m, per_metric in means.groupby("metric", sort=True):
        for g in groups:
            part = per_metric[per_metric[by].isin([a, g])]
            methods = sorted(per_metric.method.unique())
            if part.empty:
                rows += [(name, m, g, 0, 0, math.nan, math.nan, math.nan, math.nan, math.nan) for name in methods]
                continue
            wide, style, content = _units(part)
            in_b = part.drop_duplicates(unit).set_index(unit)[by].reindex(wide.index).to_numpy(dtype=object) == g
            jobs: dict[bytes, tuple[np.ndarray, list[np.ndarray], list[tuple]]] = {}
            for name in methods:
                x = wide[name].to_numpy(dtype=np.float64) if name in wide.columns else np.full(len(wide), np.nan)
                has = ~np.isnan(x)
                na, nb = int((has & ~in_b).sum()), int((has & in_b).sum())
                if not (na and nb):
                    mean_a = float(x[has & ~in_b].mean()) if na else math.nan
                    mean_b = float(x[has & in_b].mean()) if nb else math.nan
                    rows.append((name, m, g, na, nb, mean_a, mean_b, math.nan, math.nan, math.nan))
                    continue
                mean_a, mean_b = float(x[has & ~in_b].mean()), float(x[has & in_b].mean())
                gap, n = mean_b - mean_a, na + nb
                z = np.where(in_b, gap + n / nb * (x - mean_b), gap - n / na * (x - mean_a))[has]
                job = jobs.setdefault(has.tobytes(), (has, [], []))
                job[1].append(z)
                job[2].append((name, m, g, na, nb, mean_a, mean_b))
            for mask, stats_rows, keys in jobs.values():
                ci = cluster_bootstrap(np.stack(stats_rows), style[mask], content[mask], n_boot=n_boot, seed=seed,
                                       confidence=confidence)
                # the t quantile at the fewest clusters of either group, not of the whole design (module docstring)
                sizes = [len(set(labels[side])) for labels in (style, content)
                         if len(set(labels[mask])) > 1 for side in (mask & ~in_b, mask & in_b)]
                df = min(sizes, default=0) - 1
                half = stats.t.ppf(1 - (1 - confidence) / 2, df) * ci.se if df >= 1 else np.full(len(keys), np.nan)
                rows += [(*key, float(ci.estimate[j]), float(ci.estimate[j] - half[j]), float(ci.estimate[j] + half[j]))
                         for j, key in enumerate(keys)]
    out = pd.DataFrame(rows, columns=list(GAP_COLUMNS))
    order = {g: i for i, g in enumerate(groups)}
    out = out.assign(_order=out.group.map(order)).sort_values(["metric", "_order", "method"], kind="stable")
    return out.drop(columns="_order").reset_index(drop=True).astype({"n_a": int, "n_b": int})


__all__ = ["CI_COLUMNS", "ClusterCI", "DIFF_COLUMNS", "GAP_COLUMNS", "NEW_FAMILY", "NEW_RANGE", "NOVELTY", "N_BOOT",
           "SEED", "cluster_bootstrap", "holm", "method_ci", "novelty", "paired_differences", "seed_means", "split_gap"]
