"""Expert-utilization statistics on routing tables with known answers."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from sxbench.metrics.experts import DIRECTIONS, expert_stats


def table(assign, levels):
    """assign: style_id -> (family, {layer: [experts]})."""
    rows = []
    for sid, (fam, layers) in assign.items():
        for layer, experts in layers.items():
            for slot, e in enumerate(experts):
                for seed in (0, 1):  # duplicate samples of one style must not count twice
                    rows.append({"style_id": sid, "family": fam, "level": levels[fam], "layer": layer, "slot": slot,
                                 "expert": e, "seed": seed})
    return pd.DataFrame(rows)


LEVELS = {"a": "color", "b": "color", "c": "texture"}


def test_family_determined_routing():
    t = table({"a1": ("a", {"l0": [0, 1], "l1": [2, 3]}), "a2": ("a", {"l0": [0, 1], "l1": [2, 3]}),
               "b1": ("b", {"l0": [2, 3], "l1": [0, 1]}), "c1": ("c", {"l0": [4, 5], "l1": [6, 7]})}, LEVELS)
    st = expert_stats(t, num_experts=8)
    v = st.values
    assert v["routing_iou_similar"] == 1.0
    assert v["routing_iou_related"] == 0.0 and v["routing_iou_dissimilar"] == 0.0
    assert v["expert_dead_fraction"] == pytest.approx(2 / 8)  # experts 6,7 unused in l0; 4,5 in l1
    assert st.n_styles == 4
    assert v["expert_family_mi"] == pytest.approx(1.0)  # each expert identifies the family
    assert st.usage_by_family.loc["a", 0] == pytest.approx(0.5)  # chosen in 1 of 2 layers
    assert st.usage_by_family.shape == (3, 8)


def test_uniform_family_blind_routing():
    t = table({f"{f}{i}": (f, {"l0": [0, 1]}) for f in "abc" for i in range(2)}, LEVELS)
    v = expert_stats(t, num_experts=4).values
    assert v["expert_family_mi"] == pytest.approx(0.0, abs=1e-12)
    assert v["routing_iou_similar"] == v["routing_iou_dissimilar"] == 1.0
    assert v["expert_load_entropy"] == pytest.approx(math.log(2) / math.log(4))
    assert v["expert_load_cv"] == pytest.approx(1.0)  # usage (1, 1, 0, 0): std 0.5, mean 0.5


def test_routing_iou_is_pooled_over_layers():
    """IoU of the (layer, expert) sets of all layers together: 3 shared of 5 chosen = 0.6, not the mean of the
    per-layer IoUs (1 and 1/3: 0.667)."""
    t = table({"a1": ("a", {"l0": [0, 1], "l1": [2, 3]}), "a2": ("a", {"l0": [0, 1], "l1": [2, 4]})}, LEVELS)
    assert expert_stats(t, num_experts=8).values["routing_iou_similar"] == pytest.approx(0.6)


def reference_stats(t: pd.DataFrame, num_experts: int) -> dict[str, float]:
    """The statistics by the module docstring's definitions, one loop at a time (a slow independent reference)."""
    styles = t.drop_duplicates(["style_id", "layer", "slot"])
    info = styles.drop_duplicates("style_id").set_index("style_id")
    n, layers = len(info), sorted(styles.layer.unique())
    ent, dead, cv, mi = [], [], [], []
    for layer in layers:
        d = styles[styles.layer == layer]
        usage = np.array([(d.expert == e).sum() for e in range(num_experts)]) / n
        p = usage[usage > 0] / usage.sum()
        ent.append(-(p * np.log(p)).sum() / math.log(num_experts))
        dead.append((usage == 0).mean())
        cv.append(usage.std() / usage.mean())
        counts = pd.crosstab(d.family, d.expert).to_numpy(float)
        joint = counts / counts.sum()
        pf, pe = joint.sum(1), joint.sum(0)
        i = sum(joint[f, e] * math.log(joint[f, e] / (pf[f] * pe[e])) for f, e in zip(*np.nonzero(joint)))
        mi.append(i / -(pf * np.log(pf)).sum())
    sets = {s: set(zip(d.layer, d.expert)) for s, d in styles.groupby("style_id")}
    kinds: dict[str, list[float]] = {"similar": [], "related": [], "dissimilar": []}
    for a, b in itertools.combinations(sorted(sets), 2):
        kind = ("similar" if info.family[a] == info.family[b] else
                "related" if info.level[a] == info.level[b] else "dissimilar")
        kinds[kind].append(len(sets[a] & sets[b]) / len(sets[a] | sets[b]))
    return {"expert_load_entropy": np.mean(ent), "expert_dead_fraction": np.mean(dead),
            "expert_load_cv": np.mean(cv), "expert_family_mi": np.mean(mi),
            **{f"routing_iou_{k}": np.mean(v) for k, v in kinds.items()}}


def test_statistics_match_a_loop_reference():
    """Random top-k routing (k from 1 to 3, one style absent from a layer), duplicated samples: the vectorised
    statistics equal the loops'."""
    rng = np.random.default_rng(5)
    fams = {f"f{i}": f"lv{i % 3}" for i in range(7)}
    assign = {f"{f}-{j}": (f, {f"l{layer}": list(rng.choice(8, rng.integers(1, 4), replace=False))
                                for layer in range(5) if (f, j, layer) != ("f0", 0, 4)})
              for f in fams for j in range(int(rng.integers(1, 4)))}
    t = table(assign, fams)
    got = expert_stats(t, num_experts=8, replicates=20).values
    assert {k: got[k] for k in DIRECTIONS} == pytest.approx(reference_stats(t, 8), rel=1e-12)
