"""Expert-utilization statistics on routing tables with known answers."""

import math

import pandas as pd
import pytest

from sxbench.metrics.experts import expert_stats


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
