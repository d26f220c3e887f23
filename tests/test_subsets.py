"""``stratified_subset`` (``sxbench run --limit N``): every (level, split) stratum represented, balanced,
deterministic, a subset in the protocol's order."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from sxbench.interfaces import PairSpec
from sxbench.registry import create_protocol
from sxbench.subsets import stratified_subset


@pytest.fixture(scope="module")
def synth_pairs() -> tuple[PairSpec, ...]:
    return create_protocol("synth").spec.pairs


def _strata(pairs) -> Counter:
    return Counter((p.level, p.split) for p in pairs)


def test_first_pairs_are_one_stratum(synth_pairs):
    """Why the subset exists: the protocol's first 50 pairs are all at the colour level."""
    assert {p.level for p in synth_pairs[:50]} == {"color"}


@pytest.mark.parametrize("n", [50, 100, 137])
def test_limit_covers_every_stratum_evenly(synth_pairs, n):
    sub = stratified_subset(synth_pairs, n)
    assert len(sub) == n
    counts = _strata(sub)
    assert set(counts) == set(_strata(synth_pairs))  # 4 levels × 2 splits
    assert {p.level for p in sub} == {"color", "texture", "material", "stroke"}
    assert {p.split for p in sub} == {"seen", "unseen"}
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_limit_spreads_over_families_styles_and_contents(synth_pairs):
    sub = stratified_subset(synth_pairs, 50)
    assert len({p.family for p in sub}) == 20
    assert len({p.style_id for p in sub}) >= 40
    assert len({p.content_id for p in sub}) == 40  # every content once before any twice
    assert max(Counter(p.content_id for p in sub).values()) <= 2


def test_exhausted_strata_are_skipped_and_the_rest_stay_balanced(synth_pairs):
    """synth's unseen strata hold 24 pairs, its seen ones 32: past 8 × 24 the seen strata share the rest."""
    counts = _strata(stratified_subset(synth_pairs, 210))
    levels = ("color", "texture", "material", "stroke")
    assert [counts[(lvl, "unseen")] for lvl in levels] == [24] * 4
    seen = [counts[(lvl, "seen")] for lvl in levels]
    assert sum(seen) == 210 - 4 * 24 and max(seen) - min(seen) <= 1


def test_deterministic_subset_in_protocol_order(synth_pairs):
    a, b = stratified_subset(synth_pairs, 50), stratified_subset(tuple(synth_pairs), 50)
    assert a == b
    assert set(a) <= set(synth_pairs)
    index = {p.pair_id: i for i, p in enumerate(synth_pairs)}
    positions = [index[p.pair_id] for p in a]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    # the same protocol built again gives the same pairs
    assert stratified_subset(create_protocol("synth").spec.pairs, 50) == a


def test_larger_limit_keeps_the_smaller_one(synth_pairs):
    previous: set[PairSpec] = set()
    for n in (1, 4, 8, 50, 51, 100, 223):
        sub = set(stratified_subset(synth_pairs, n))
        assert previous <= sub, n
        previous = sub


def test_small_limits_cover_levels_first(synth_pairs):
    sub = stratified_subset(synth_pairs, 4)
    assert {p.level for p in sub} == {"color", "texture", "material", "stroke"}
    assert {p.split for p in sub} == {"seen", "unseen"}
    assert len(_strata(stratified_subset(synth_pairs, 8))) == 8


def test_synth_smoke_eight_pairs_one_per_stratum():
    pairs = create_protocol("synth-smoke").spec.pairs
    sub = stratified_subset(pairs, 8)
    counts = _strata(sub)
    assert len(counts) == 8 and set(counts.values()) == {1}
    assert {lvl for lvl, _ in counts} == {"color", "texture", "material", "stroke"}
    assert {split for _, split in counts} == {"seen", "unseen"}
    assert sub == list(pairs)  # n ≥ len(pairs): all of them, in order


def test_limit_at_or_above_the_size_returns_all(synth_pairs):
    assert stratified_subset(synth_pairs, len(synth_pairs)) == list(synth_pairs)
    assert stratified_subset(synth_pairs, 10_000) == list(synth_pairs)
    assert stratified_subset((), 5) == []


def test_unlabelled_pairs_spread_over_styles():
    """A protocol without levels or splits (``folder``): one stratum, styles take turns."""
    pairs = [PairSpec(f"c{c}__s{s}", f"c{c}", f"s{s}") for s in range(3) for c in range(4)]
    sub = stratified_subset(pairs, 3)
    assert [p.style_id for p in sub] == ["s0", "s1", "s2"]
    assert len({p.content_id for p in sub}) == 3


def test_incomplete_grid_still_covers_every_level_first():
    """Level ``b`` has only a seen stratum: the first picks still reach both levels."""
    base = PairSpec("x", "c0", "s0")
    pairs = [replace(base, pair_id=f"{lvl}-{split}-{k}", content_id=f"c{k}", style_id=f"{lvl}-{split}", level=lvl,
                     split=split) for lvl, split in (("a", "seen"), ("a", "unseen"), ("b", "seen")) for k in range(3)]
    sub = stratified_subset(pairs, 2)
    assert {p.level for p in sub} == {"a", "b"}


@pytest.mark.parametrize("n", [0, -3, 2.5, True, "5"])
def test_rejects_non_positive_or_non_integer_n(synth_pairs, n):
    with pytest.raises(ValueError, match="positive number of pairs"):
        stratified_subset(synth_pairs, n)
