"""Deterministic subsets of a protocol's pairs (``sxbench run --limit N``).

A protocol lists its pairs grouped (``synth``: family by family, so its first 50 pairs are all at the colour
level); taking the first N would bias every mean towards whatever comes first. ``stratified_subset`` instead
takes N pairs in which every (level, split) stratum present is represented, as evenly as the strata allow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from numbers import Integral
from typing import TypeVar

from sxbench.interfaces import PairSpec

T = TypeVar("T")


def stratified_subset(pairs: Sequence[PairSpec], n: int) -> list[PairSpec]:
    """``n`` of ``pairs`` covering every (level, split) stratum present, in the protocol's own order.

    The pairs are ranked, and the first ``n`` of the ranking kept:

    1. strata (one per (level, split) present) are visited round-robin, one pair each per round; a stratum
       that runs out is skipped, so counts differ by at most one across the strata that still have pairs;
    2. strata are visited in diagonal order: one stratum of every level (levels in the order they first
       appear), then a second of every level that has one, and so on, the split advancing with the level
       (``synth``: color/seen, texture/unseen, material/seen, stroke/unseen, color/unseen, texture/seen, …).
       So any ``n ≥ #levels`` covers every level (on ``synth``, both splits too) and ``n ≥ #strata`` covers
       every stratum;
    3. within a stratum, families take turns and within a family styles take turns: a stratum's first picks
       are as many families, then styles, as it has;
    4. a pick of a style takes that style's pair whose content the subset has used least so far (ties: the
       first in protocol order), so contents are spread too.

    No randomness: the subset depends only on ``pairs`` (their order and labels) and ``n``, and a larger ``n``
    keeps every pair a smaller one took.

    Args:
        pairs: A protocol's pairs (``ProtocolSpec.pairs``).
        n: How many to keep, at least 1; ``n ≥ len(pairs)`` keeps them all.

    Returns:
        The kept pairs, in their order in ``pairs``.
    """
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"a subset needs a positive number of pairs, got {n!r} (sxbench run --limit N, N ≥ 1)")
    if n >= len(pairs):
        return list(pairs)
    order = range(len(pairs))
    levels = _first_seen(pairs[i].level for i in order)
    splits = _first_seen(pairs[i].split for i in order)
    strata = _groups(order, lambda i: (pairs[i].level, pairs[i].split))
    # each level's splits, starting from the split its index points at; then rank 0 of every level, rank 1, ...
    turn = {s: (splits.index(s[1]) - levels.index(s[0])) % len(splits) for s in strata}
    rank = {s: sorted((t for t in strata if t[0] == s[0]), key=turn.__getitem__).index(s) for s in strata}
    diagonal = sorted(strata, key=lambda s: (rank[s], levels.index(s[0])))
    within = [_spread(strata[s], [lambda i: pairs[i].family, lambda i: pairs[i].style_id]) for s in diagonal]
    # the ranking fixes which style each pick takes; the pair of that style is the one whose content is used
    # least so far (then protocol order), so the subset spreads over contents as well as styles
    def leaf(i: int) -> tuple[str, str, str, str]:
        return pairs[i].level, pairs[i].split, pairs[i].family, pairs[i].style_id

    left = _groups(order, leaf)
    uses: dict[str, int] = {}
    kept = []
    for slot in _round_robin(within)[:n]:
        i = min(left[leaf(slot)], key=lambda j: (uses.get(pairs[j].content_id, 0), j))
        left[leaf(slot)].remove(i)
        uses[pairs[i].content_id] = uses.get(pairs[i].content_id, 0) + 1
        kept.append(i)
    return [pairs[i] for i in sorted(kept)]


def _first_seen(values: Iterable[T]) -> list[T]:
    """Distinct ``values`` in the order they first appear."""
    return list(dict.fromkeys(values))


def _groups(items: Sequence[T], key: Callable[[T], object]) -> dict[object, list[T]]:
    """``items`` grouped by ``key``, groups in order of first appearance, items in their order."""
    out: dict[object, list[T]] = {}
    for it in items:
        out.setdefault(key(it), []).append(it)
    return out


def _spread(items: Sequence[T], keys: list[Callable[[T], object]]) -> list[T]:
    """``items`` reordered so that the groups of ``keys[0]`` take turns, and within each group those of
    ``keys[1]``, and so on; the innermost groups keep their order."""
    if not keys:
        return list(items)
    return _round_robin([_spread(g, keys[1:]) for g in _groups(items, keys[0]).values()])


def _round_robin(lists: Sequence[Sequence[T]]) -> list[T]:
    """The first item of every list, then the second of every list that has one, and so on."""
    longest = max((len(x) for x in lists), default=0)
    return [x[k] for k in range(longest) for x in lists if k < len(x)]


__all__ = ["stratified_subset"]
