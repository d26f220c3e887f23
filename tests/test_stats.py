"""``sxbench.stats``: calibration of the two-way cluster bootstrap on synth's design, and its bookkeeping (seeds,
pairing, Holm)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from sxbench.protocols.synth import synth
from sxbench.stats import (CI_COLUMNS, DIFF_COLUMNS, cluster_bootstrap, holm, method_ci, paired_differences,
                           seed_means)

# The simulation model of the calibration. y[m, pair] = mu[m] + a[style] + b[content] + g[m, style] + h[m, content]
# + e[m, pair], every term normal with mean 0 and these standard deviations. The style effect is large, so an
# interval that ignores clustering is visibly too narrow; the method × style and method × content interactions give
# the paired differences clustered noise of their own (style and content effects cancel in a difference).
SD_STYLE, SD_CONTENT, SD_RESIDUAL = 1.0, 0.5, 0.5
SD_METHOD_STYLE, SD_METHOD_CONTENT = 0.5, 0.25
TRUE_DIFFS = (0.0, 0.3)
"""True mean differences (method 1 − method 0) simulated, each with its own datasets."""
N_DATASETS = 1000
"""Simulated datasets per true difference."""


@pytest.fixture(scope="module")
def design() -> tuple[np.ndarray, np.ndarray]:
    """``synth``'s pairs as (style index, content index): 56 styles × 4 contents, 40 contents recurring in 5–6
    pairs each."""
    pairs = synth().spec.pairs
    styles = {s: i for i, s in enumerate(dict.fromkeys(p.style_id for p in pairs))}
    contents = {c: i for i, c in enumerate(sorted({p.content_id for p in pairs}))}
    return (np.array([styles[p.style_id] for p in pairs]), np.array([contents[p.content_id] for p in pairs]))


def simulate(style: np.ndarray, content: np.ndarray, n: int, diff: float, rng: np.random.Generator) -> np.ndarray:
    """(2, n, pairs) values of two methods in ``n`` datasets under the model above; mu = (0, diff)."""
    n_s, n_c = style.max() + 1, content.max() + 1
    shared = rng.normal(0, SD_STYLE, (n, n_s))[:, style] + rng.normal(0, SD_CONTENT, (n, n_c))[:, content]
    out = []
    for mu in (0.0, diff):
        out.append(mu + shared + rng.normal(0, SD_METHOD_STYLE, (n, n_s))[:, style]
                   + rng.normal(0, SD_METHOD_CONTENT, (n, n_c))[:, content]
                   + rng.normal(0, SD_RESIDUAL, (n, len(style))))
    return np.stack(out)


def naive_t(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-sample Student-t interval of each row (the report's ``mean_ci`` before issue 17)."""
    n = d.shape[1]
    half = scipy_stats.t.ppf(0.975, n - 1) * d.std(axis=1, ddof=1) / np.sqrt(n)
    return d.mean(axis=1) - half, d.mean(axis=1) + half


def test_calibration_on_synth_design(design):
    """The paired, clustered 95% interval covers the true difference in 93–97% of 1000 simulated datasets for a
    zero and a non-zero truth (default B = 2000; every dataset goes through the same ``cluster_bootstrap`` that
    ``paired_differences`` calls, one call for all datasets); a per-sample t-interval covers far less."""
    style, content = design
    assert len(style) == 224 and style.max() + 1 == 56 and content.max() + 1 == 40
    assert set(np.bincount(content)) == {5, 6}
    rng = np.random.default_rng(20240617)
    t0 = time.perf_counter()
    lines = [f"calibration: {N_DATASETS} datasets per truth, synth design (56 styles × 4 contents, 40 contents); "
             f"SD style {SD_STYLE}, content {SD_CONTENT}, residual {SD_RESIDUAL}, method×style {SD_METHOD_STYLE}, "
             f"method×content {SD_METHOD_CONTENT}"]
    for truth in TRUE_DIFFS:
        y = simulate(style, content, N_DATASETS, truth, rng)
        d = y[1] - y[0]
        rows = {"clustered (multiway)": cluster_bootstrap(d, style, content),
                "Owen pigeonhole, percentile": cluster_bootstrap(d, style, content, scheme="pigeonhole"),
                "method 0 mean, clustered": cluster_bootstrap(y[0], style, content)}
        coverage, width = {}, {}
        for name, ci in rows.items():
            target = 0.0 if name.startswith("method 0") else truth
            coverage[name] = np.mean((ci.ci_low <= target) & (target <= ci.ci_high))
            width[name] = np.mean(ci.ci_high - ci.ci_low)
        lo, hi = naive_t(d)
        coverage["naive per-sample t"] = np.mean((lo <= truth) & (truth <= hi))
        width["naive per-sample t"] = np.mean(hi - lo)
        lines += [f"  true diff {truth}: {name:28s} coverage {coverage[name]:.3f}, mean width {width[name]:.3f}"
                  for name in coverage]
        assert 0.93 <= coverage["clustered (multiway)"] <= 0.97, lines
        assert 0.93 <= coverage["method 0 mean, clustered"] <= 0.97, lines
        assert coverage["naive per-sample t"] < 0.90, lines
    print("\n".join(lines + [f"  ({time.perf_counter() - t0:.1f} s)"]))


def values_frame(y: np.ndarray, methods: tuple[str, ...] = ("a", "b"), seeds: tuple[int, ...] = (0,),
                 metric: str = "m") -> pd.DataFrame:
    """Long-format values (as ``Store.values()``) of ``methods`` on synth's pairs; ``y``: (methods, pairs)."""
    pairs = synth().spec.pairs
    rows = [dict(method=name, method_config="c0", protocol="synth", split=p.split, level=p.level, family=p.family,
                 pair_id=p.pair_id, content_id=p.content_id, style_id=p.style_id, seed=seed, metric=metric,
                 value=float(y[i, j]), higher_is_better=True)
            for i, name in enumerate(methods) for j, p in enumerate(pairs) for seed in seeds]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def one_dataset(design) -> np.ndarray:
    style, content = design
    return simulate(style, content, 1, 0.3, np.random.default_rng(7))[:, 0]


def test_paired_differences_is_the_calibrated_bootstrap(one_dataset, design):
    """``paired_differences`` on a long table gives what ``cluster_bootstrap`` gives on the difference vector."""
    values = values_frame(one_dataset)
    got = paired_differences(values, "a")
    assert list(got.columns) == list(DIFF_COLUMNS)
    assert got[["method", "against", "metric", "level", "split", "n"]].values.tolist() == \
        [["b", "a", "m", "all", "all", 224]]
    pairs = synth().spec.pairs
    ci = cluster_bootstrap(one_dataset[1] - one_dataset[0], [p.style_id for p in pairs], [p.content_id for p in pairs])
    np.testing.assert_allclose(got.loc[0, ["diff", "ci_low", "ci_high", "p"]].to_numpy(dtype=float),
                               [ci.estimate[0], ci.ci_low[0], ci.ci_high[0], ci.p[0]], rtol=1e-12)
    assert got.loc[0, "p_holm"] == got.loc[0, "p"]  # one method: nothing to adjust
    assert got.loc[0, "diff"] == pytest.approx(np.mean(one_dataset[1] - one_dataset[0]), abs=1e-12)


def test_deterministic_method_with_two_seeds_gets_the_one_seed_interval(one_dataset):
    one, two = values_frame(one_dataset, seeds=(0,)), values_frame(one_dataset, seeds=(0, 1))
    pd.testing.assert_frame_equal(method_ci(one), method_ci(two), check_exact=True)
    pd.testing.assert_frame_equal(paired_differences(one, "a"), paired_differences(two, "a"), check_exact=True)
    assert (seed_means(two).n_seeds == 2).all()


def test_method_against_itself_is_exactly_zero(one_dataset):
    y = np.stack([one_dataset[0], one_dataset[0], one_dataset[1]])
    got = paired_differences(values_frame(y, methods=("a", "a_copy", "b")), "a").set_index("method")
    assert (got.loc["a_copy", ["diff", "ci_low", "ci_high"]] == 0.0).all()
    assert got.loc["a_copy", "p"] == 1.0 and got.loc["a_copy", "n"] == 224


def test_holm_known_example():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04])  # NaN is not a test
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])


def test_holm_is_applied_across_methods_within_each_metric(one_dataset):
    y = np.stack([one_dataset[0], one_dataset[1], one_dataset[0] + 0.05, one_dataset[1] - 0.1])
    values = pd.concat([values_frame(y, methods=("a", "b", "c", "d"), metric=m) for m in ("m1", "m2")])
    got = paired_differences(values, "a")
    assert len(got) == 6
    for _, rows in got.groupby("metric"):
        np.testing.assert_allclose(rows.p_holm, holm(rows.p))
    by_level = paired_differences(values, "a", by="level")
    assert set(by_level.level) == {"color", "texture", "material", "stroke"} and (by_level.split == "all").all()
    for _, rows in by_level.groupby(["metric", "level"]):
        assert len(rows) == 3
        np.testing.assert_allclose(rows.p_holm, holm(rows.p))


def test_n_counts_the_pairs_both_methods_have(one_dataset):
    values = values_frame(one_dataset, seeds=(0, 1))
    assert paired_differences(values, "a").n.tolist() == [224]
    failed = values.copy()
    first_b = failed.index[(failed.method == "b") & (failed.pair_id == failed.pair_id.iloc[0])]
    failed.loc[first_b[0], "value"] = np.nan  # one seed of one pair failed: that pair keeps its other seed
    assert paired_differences(failed, "a").n.tolist() == [224]
    failed.loc[first_b, "value"] = np.nan  # every seed of that pair failed: the pair is not compared
    got = paired_differences(failed, "a")
    assert got.n.tolist() == [223]
    assert method_ci(failed).set_index("method").n.to_dict() == {"a": 224, "b": 223}
    dropped = values[~values.index.isin(first_b)]  # the sample missing altogether (a partial run)
    assert paired_differences(dropped, "a").n.tolist() == [223]


def test_sign_is_method_minus_against_in_the_metric_units(one_dataset):
    y = np.stack([one_dataset[0], one_dataset[0] + 2.0])
    got = paired_differences(values_frame(y), "a")
    assert got.loc[0, "diff"] == pytest.approx(2.0)
    assert got.loc[0, "ci_low"] == pytest.approx(2.0) and got.loc[0, "ci_high"] == pytest.approx(2.0)
    back = paired_differences(values_frame(y), "b")
    assert back.loc[0, "diff"] == pytest.approx(-2.0)


def test_filters_and_unknown_names(one_dataset):
    values = values_frame(one_dataset)
    got = paired_differences(values, "a", metric="m", level="color", split="seen")
    assert got[["level", "split"]].values.tolist() == [["color", "seen"]]
    assert got.n.item() == len({p.pair_id for p in synth().spec.pairs if p.level == "color" and p.split == "seen"})
    ci = method_ci(values, by="split")
    assert list(ci.columns) == list(CI_COLUMNS) and set(ci.split) == {"seen", "unseen"}
    assert (ci.ci_low < ci["mean"]).all() and (ci["mean"] < ci.ci_high).all()
    with pytest.raises(ValueError, match=r"unknown method 'aa' \(did you mean 'a'\?\); known methods: a, b"):
        paired_differences(values, "aa")
    with pytest.raises(ValueError, match="unknown metric 'x'; known metrics: m"):
        paired_differences(values, "a", metric="x")
    with pytest.raises(ValueError, match="known levels: color, material, stroke, texture"):
        method_ci(values, level="ink")


def test_reproducible_and_seeded():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 40))
    style, content = np.arange(40) // 4, np.arange(40) % 10
    a, b = cluster_bootstrap(x, style, content), cluster_bootstrap(x, style, content)
    np.testing.assert_array_equal(a.ci_low, b.ci_low)
    other = cluster_bootstrap(x, style, content, seed=1)
    assert not np.array_equal(a.ci_low, other.ci_low)
    # one content for every pair: content is constant, only styles are resampled
    single = cluster_bootstrap(x, style, np.zeros(40))
    assert single.df == 9 and np.isfinite(single.ci_low).all()
    # one unit: no interval
    assert np.isnan(cluster_bootstrap(x[:, :1], style[:1], content[:1]).ci_low).all()
