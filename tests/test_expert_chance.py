"""Chance levels of the expert statistics on routing tables with synth's design (56 styles in 20 families, 5 per
level, 16 experts, top-2): random routing sits at chance, family-specific routing far above it, a collapsed
router's IoU matches the paper's 33.18% and its chance alike, and the shuffle-subtracted MI of random routing is 0.
Numbers quoted from issue 17 (its simulation of uniformly random top-2 routing, pooled IoU): 16 active experts
give IoU 6.7% and family MI 0.38; 4 active give 33.5% and 0.08."""

from __future__ import annotations

import collections
import itertools
import math

import numpy as np
import pandas as pd
import pytest

from sxbench.metrics.experts import (CHANCE_PARTS, DIRECTIONS, EXPERT_METRICS, NULL_DESCRIPTIONS, NULLS,
                                     _random_routings, expert_stats)

NUM_EXPERTS, TOP_K, NUM_LAYERS = 16, 2, 20
FAMILIES = [(f"fam{f:02d}", f"level{f // 5}", 3 if f < 16 else 2) for f in range(20)]  # synth: 16×3 + 4×2 = 56
STYLES = [(f"{fam}-{i}", f, fam, level) for f, (fam, level, n) in enumerate(FAMILIES) for i in range(n)]


def routing_table(experts: np.ndarray) -> pd.DataFrame:
    """The long routing table of ``experts`` ``(56, L, k)`` (style, layer, slot → expert), two samples per style
    (the statistics count each style once)."""
    n_styles, n_layers, k = experts.shape
    style, layer, slot = (a.ravel() for a in np.indices(experts.shape))
    table = pd.DataFrame({
        "style_id": np.array([s[0] for s in STYLES])[style], "family": np.array([s[2] for s in STYLES])[style],
        "level": np.array([s[3] for s in STYLES])[style], "layer": [f"block{i:02d}" for i in layer], "slot": slot,
        "expert": experts.ravel()})
    return pd.concat([table.assign(seed=0), table.assign(seed=1)], ignore_index=True)


def random_router(seed: int, active: int = NUM_EXPERTS, layers: int = NUM_LAYERS) -> np.ndarray:
    """Each style draws its top-k uniformly among experts ``0..active-1`` in every layer: ``(56, layers, k)``."""
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((len(STYLES), layers, active)), -1)[..., :TOP_K]


def family_router(layers: int = NUM_LAYERS) -> np.ndarray:
    """Each family its own pair of experts in each layer (20 families on 16 experts: families 8 apart share)."""
    fam = np.array([s[1] for s in STYLES])[:, None]
    layer = np.arange(layers)[None, :]
    return np.stack([(2 * fam + 3 * layer) % NUM_EXPERTS, (2 * fam + 1 + 3 * layer) % NUM_EXPERTS], -1)


def interval(values: dict[str, float], name: str) -> tuple[float, float]:
    return values[f"{name}_minus_chance_lo"], values[f"{name}_minus_chance_hi"]


def covers_zero(values: dict[str, float], name: str) -> bool:
    lo, hi = interval(values, name)
    return lo <= 0.0 <= hi


@pytest.fixture(scope="module")
def uniform():
    return expert_stats(routing_table(random_router(0)), NUM_EXPERTS)


@pytest.fixture(scope="module")
def collapsed():
    return expert_stats(routing_table(random_router(1, active=4)), NUM_EXPERTS)


def test_every_statistic_has_its_chance_metrics():
    names = [m.info.name for m in EXPERT_METRICS]
    assert names == [n for x in DIRECTIONS for n in (x, *(f"{x}_{p}" for p in CHANCE_PARTS))]
    assert set(NULLS) == set(DIRECTIONS) and set(NULLS.values()) <= set(NULL_DESCRIPTIONS)
    for m in EXPERT_METRICS:
        info = m.info
        stat = next(x for x in DIRECTIONS if info.name == x or info.name.startswith(f"{x}_"))
        assert info.scope == "experts" and info.group == "experts" and info.higher_is_better == DIRECTIONS[stat]
        assert info.description and (info.name == stat or NULL_DESCRIPTIONS[NULLS[stat]] in info.description)
        if info.name.endswith("minus_chance"):
            lo, hi = info.range
            assert lo < 0 < hi
    descriptions = {m.info.name: m.info.description for m in EXPERT_METRICS}
    assert all("pooled over layers" in descriptions[f"routing_iou_{k}"] for k in ("similar", "related", "dissimilar"))


def test_uniform_random_routing_is_at_chance(uniform):
    """16 active experts: observed ≈ chance for every statistic, and the issue's 6.7% pooled IoU and 0.38 MI."""
    v = uniform.values
    for name in DIRECTIONS:
        assert covers_zero(v, name), (name, v[name], v[f"{name}_chance"], interval(v, name))
    for kind in ("similar", "related", "dissimilar"):
        assert v[f"routing_iou_{kind}"] == pytest.approx(0.067, abs=0.01)
        assert v[f"routing_iou_{kind}_chance"] == pytest.approx(0.067, abs=0.005)
    # random top-2 of 16: E|∩| / E|∪| = (k²/E) / (2k − k²/E) = 1/15 per layer; pooled over 20 layers the mean
    # ratio is a little above it (0.0675); the mean IoU per layer would be 0.086
    assert uniform.chance.loc["routing_iou_dissimilar", "active"] == pytest.approx(1 / 15, abs=0.002)
    assert v["expert_family_mi"] == pytest.approx(0.38, abs=0.02)
    assert v["expert_dead_fraction"] == 0.0
    assert v["expert_dead_fraction_chance"] == pytest.approx((1 - TOP_K / NUM_EXPERTS) ** len(STYLES), abs=5e-4)


def test_intervals_cover_zero_under_the_null_at_about_95_percent():
    """Over 20 random routings (4 layers, 100 replicates) each statistic's interval covers 0 in at least 15
    (expected 19; P(≤ 14) ≈ 0.3% per statistic). The dead fraction is left out: 0 in nearly every draw."""
    covered = collections.Counter()
    for seed in range(20):
        v = expert_stats(routing_table(random_router(100 + seed, layers=4)), NUM_EXPERTS, replicates=100,
                         seed=seed).values
        covered.update(name for name in DIRECTIONS if covers_zero(v, name))
    assert all(covered[name] >= 15 for name in DIRECTIONS if name != "expert_dead_fraction"), covered


def test_family_specific_routing_is_far_above_chance():
    v = expert_stats(routing_table(family_router()), NUM_EXPERTS).values
    assert v["routing_iou_similar"] == 1.0
    assert interval(v, "routing_iou_similar")[0] > 0.5
    assert v["expert_family_mi_minus_chance"] > 0.2 and interval(v, "expert_family_mi")[0] > 0.2
    assert interval(v, "routing_iou_related")[1] < 0  # other families of the level never share a pair


def test_collapsed_router_matches_the_papers_similarity_by_chance(collapsed):
    """4 active experts: IoU-similar ≈ 33.5% ≈ the paper's 33.18%, and ≈ its own chance; the MI is chance too.
    What the collapse does show: dead experts far beyond chance."""
    v = collapsed.values
    assert v["routing_iou_similar"] == pytest.approx(0.335, abs=0.02)
    assert v["routing_iou_similar"] == pytest.approx(0.3318, abs=0.03)
    assert v["routing_iou_similar_chance"] == pytest.approx(0.335, abs=0.01)
    assert covers_zero(v, "routing_iou_similar") and abs(v["routing_iou_similar_minus_chance"]) < 0.03
    assert v["expert_family_mi"] == pytest.approx(0.08, abs=0.015)
    assert covers_zero(v, "expert_family_mi") and abs(v["expert_family_mi_minus_chance"]) < 0.015
    assert covers_zero(v, "expert_load_entropy")  # even load over the 4 experts it uses
    assert v["expert_dead_fraction"] == 0.75 and interval(v, "expert_dead_fraction")[0] > 0.7


def test_shuffle_subtracted_mi_of_random_routing_is_zero(uniform):
    """The plug-in MI of family-blind routing is ≈ 0.38 (its bias); minus its label-permutation mean it is 0,
    on average over routings to within its Monte Carlo error."""
    assert uniform.values["expert_family_mi"] > 0.3
    corrected = [expert_stats(routing_table(random_router(200 + seed, layers=4)), NUM_EXPERTS, replicates=100,
                              seed=seed).values["expert_family_mi_minus_chance"] for seed in range(8)]
    assert abs(np.mean(corrected)) < 0.005 and max(map(abs, corrected)) < 0.02, corrected


def test_label_permutation_chance_of_iou_is_the_mean_over_all_pairs(uniform):
    """Under permuted labels every pair is equally likely to be 'similar': the chance level of each IoU is, in
    expectation, the mean IoU over all pairs of styles."""
    experts = random_router(0)
    sets = [{(layer, e) for layer in range(NUM_LAYERS) for e in experts[s, layer]} for s in range(len(STYLES))]
    all_pairs = np.mean([len(a & b) / len(a | b) for a, b in itertools.combinations(sets, 2)])
    for kind in ("similar", "related", "dissimilar"):
        assert uniform.values[f"routing_iou_{kind}_chance"] == pytest.approx(all_pairs, abs=0.002)


def test_chance_levels_are_seeded():
    table = routing_table(random_router(3, layers=4))
    a, b = (expert_stats(table, NUM_EXPERTS, replicates=50, seed=7).values for _ in range(2))
    c = expert_stats(table, NUM_EXPERTS, replicates=50, seed=8).values
    assert a == pytest.approx(b, nan_ok=True)
    assert a["routing_iou_similar_chance"] != c["routing_iou_similar_chance"]
    assert all(a[x] == c[x] for x in DIRECTIONS)  # the observed statistics take no randomness
    none = expert_stats(table, NUM_EXPERTS, replicates=0).values
    assert all(math.isnan(none[f"{x}_{p}"]) for x in DIRECTIONS for p in CHANCE_PARTS)


def test_random_routings_draw_uniform_subsets_of_the_active_experts():
    active = np.zeros((1, 8), dtype=bool)
    active[0, [0, 2, 3, 6, 7]] = True
    count = np.full((500, 1), 3)
    member = _random_routings(count, active, 40, np.random.default_rng(0))[:, :, 0]  # (40, 500, 8)
    assert (member.sum(-1) == 3).all() and not member[..., ~active[0]].any()
    subsets = collections.Counter(tuple(np.flatnonzero(m)) for m in member.reshape(-1, 8))
    assert len(subsets) == math.comb(5, 3)
    expected = member.shape[0] * member.shape[1] / math.comb(5, 3)
    assert all(abs(n - expected) < 5 * math.sqrt(expected) for n in subsets.values()), subsets
