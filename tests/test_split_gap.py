"""Seen vs the two kinds of unseen pair (``sxbench.stats.novelty``, ``split_gap``) and the report's table of them.

The design is ``synth``'s in small: seen families with two seen styles and one held-out-range style each, and
held-out families with two unseen styles each, four contents a style, contents shared across all three groups. A
method's value on a pair is a style effect (of mean 0 within each kind of pair) + a content effect + noise, plus a
planted shift: +0.3 on new families,
+0.0 on new ranges (``a``), and no shift at all (``b``)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import html_tables

from sxbench.records import MethodInfo, MetricInfo, MetricValue, SampleRecord
from sxbench.report import REPORT_N_BOOT, render
from sxbench.stats import GAP_COLUMNS, NEW_FAMILY, NEW_RANGE, SEEN, novelty, split_gap
from sxbench.store import Store

SEEN_FAMILIES, HELD_OUT_FAMILIES, N_CONTENTS, PER_STYLE = 12, 6, 24, 4
SHIFT = {"a": {NEW_FAMILY: 0.3, NEW_RANGE: 0.0}, "b": {NEW_FAMILY: 0.0, NEW_RANGE: 0.0},
         "identity": {NEW_FAMILY: 0.0, NEW_RANGE: 0.0}}
"""Planted gap to seen of each method and kind of unseen pair; ``identity`` is a control."""
H2, H3 = "Seen vs unseen styles", "Unseen: new family vs new range"


def _styles(new_range: bool = True) -> list[tuple[str, str, str]]:
    """``(style_id, split, family)``: 2 seen + 1 held-out-range style per seen family, 2 per held-out family."""
    out = []
    for f in range(SEEN_FAMILIES):
        out += [(f"f{f}s{k}", "seen", f"fam{f}") for k in range(2)]
        out += [(f"f{f}r", "unseen", f"fam{f}")] if new_range else []
    for f in range(SEEN_FAMILIES, SEEN_FAMILIES + HELD_OUT_FAMILIES):
        out += [(f"f{f}u{k}", "unseen", f"fam{f}") for k in range(2)]
    return out


def _values(seed: int = 0, new_range: bool = True) -> pd.DataFrame:
    """Long-format values (one metric, ``score``, higher is better) as ``Store.values()`` gives them."""
    rng = np.random.default_rng(seed)
    styles = _styles(new_range)
    kinds = [SEEN if split == "seen" else NEW_RANGE if style.endswith("r") else NEW_FAMILY
             for style, split, _ in styles]
    style_effect, content_effect = rng.normal(0, 0.1, len(styles)), rng.normal(0, 0.1, N_CONTENTS)
    for kind in set(kinds):  # style effects of mean 0 within each kind: the planted gap is the sample's, not drawn
        of_kind = np.array(kinds) == kind
        style_effect[of_kind] -= style_effect[of_kind].mean()
    rows = []
    for s, ((style, split, family), kind) in enumerate(zip(styles, kinds)):
        for k in range(PER_STYLE):
            c = (5 * s + 7 * k) % N_CONTENTS
            base = 0.5 + style_effect[s] + content_effect[c]
            for method, shift in SHIFT.items():
                v = base + shift.get(kind, 0.0) + rng.normal(0, 0.03)
                rows.append((method, "synth", f"c{c}__{style}", style, f"c{c}", split, "color", family, 0, "score",
                             v, True, kind))
    return pd.DataFrame(rows, columns=["method", "protocol", "pair_id", "style_id", "content_id", "split", "level",
                                       "family", "seed", "metric", "value", "higher_is_better", "kind"])


def test_novelty_tells_new_families_from_new_ranges():
    d = pd.DataFrame({
        "protocol": ["p", "p", "p", "p", "p", "p", "q", "q", "p"],
        "pair_id": [f"x{i}" for i in range(9)],
        "split": ["seen", "unseen", "unseen", "unseen", "unseen", "seen", "seen", "unseen", "all"],
        "family": ["A", "A", "B", None, "", "C", "B", "B", "A"],
    })
    # B is held out in p (no seen pair there) though q has seen B styles; the family is read within a protocol
    assert novelty(d).tolist() == [SEEN, NEW_RANGE, NEW_FAMILY, None, None, SEEN, SEEN, NEW_RANGE, None]
    assert novelty(d.drop(columns="protocol")).tolist()[2] == NEW_RANGE  # one protocol: B has seen pairs in it
    with pytest.raises(ValueError, match="family"):
        novelty(d.drop(columns="family"))


def test_novelty_of_the_planted_design():
    d = _values()
    assert (novelty(d) == d.kind).all()


def test_the_gap_finds_the_planted_shift_with_its_interval():
    d = _values()
    gaps = split_gap(d, n_boot=REPORT_N_BOOT)
    assert tuple(gaps.columns) == GAP_COLUMNS
    assert list(gaps.group) == [NEW_FAMILY] * 3 + [NEW_RANGE] * 3  # b in the order asked, methods sorted
    means = d.groupby(["method", "kind"]).value.mean()
    counts = d.groupby(["method", "kind"]).size()
    for r in gaps.itertuples():
        assert r.n_a == counts[(r.method, SEEN)] == 2 * SEEN_FAMILIES * PER_STYLE
        assert r.n_b == counts[(r.method, r.group)]
        assert math.isclose(r.gap, means[(r.method, r.group)] - means[(r.method, SEEN)], abs_tol=1e-12)
        assert math.isclose(r.mean_b - r.mean_a, r.gap, abs_tol=1e-12)
        planted = SHIFT[r.method][r.group]
        assert r.ci_low < planted < r.ci_high, r
        assert 0 < r.ci_high - r.ci_low < 0.3, r
        if planted:
            assert r.ci_low > 0, r  # excludes 0
    row = gaps.set_index(["method", "group"]).loc[("a", NEW_FAMILY)]
    assert abs(row.gap - 0.3) < 0.1


def test_the_gap_averages_seeds_and_is_seeded():
    d = _values()
    twice = pd.concat([d, d.assign(seed=1)], ignore_index=True)  # a deterministic method run with two seeds
    one, two = split_gap(d, n_boot=200), split_gap(twice, n_boot=200)
    pd.testing.assert_frame_equal(one, two)
    assert not one.equals(split_gap(d, n_boot=200, seed=1))


def test_the_gap_with_one_kind_and_unknown_groups():
    d = _values(new_range=False)
    gaps = split_gap(d, b=NEW_FAMILY, n_boot=200)
    assert set(gaps.group) == {NEW_FAMILY} and gaps.gap.notna().all()
    with pytest.raises(ValueError, match="did you mean 'new_range'"):
        split_gap(_values(), b="new_rang", n_boot=200)
    # a method without any new-family value: counted, no gap
    part = d[~((d.method == "b") & (d.kind == NEW_FAMILY))]
    row = split_gap(part, b=NEW_FAMILY, n_boot=200).set_index("method").loc["b"]
    assert row.n_b == 0 and math.isnan(row.gap) and math.isnan(row.ci_low)


def _write_store(run: Path, values: pd.DataFrame) -> None:
    with Store(run) as st:
        run_id = st.begin_run("synth", {"protocol": "synth", "seeds": [0]}, {})
        st.register_metric(MetricInfo("score", True, (-1.0, 2.0), "fidelity", frozenset({"content"})))
        infos = {m: MethodInfo(m, "1", control=(m == "identity")) for m in SHIFT}
        for info in infos.values():
            st.register_method(info)
        for r in values.itertuples():
            key = f"{r.method}:{r.pair_id}:0"
            st.write_sample(
                SampleRecord(key, run_id, r.method, infos[r.method].config_hash, "synth", "1", r.pair_id,
                             r.content_id, r.style_id, 0, r.split, r.level, r.family, "ok", None, None, 0.01, 1, 1,
                             "cpu_rss", "cpu"),
                [MetricValue(key, "score", float(r.value), True, "fidelity", "1", None)])
        st.finish_run(run_id)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """``{name: html}``: a store with both kinds of unseen pair, and one with held-out families only."""
    out = {}
    for name, new_range in (("both", True), ("families", False)):
        run = tmp_path_factory.mktemp(name)
        _write_store(run, _values(new_range=new_range))
        out[name] = render(run).read_text(encoding="utf-8")
    return out


def test_the_report_shows_both_kinds_with_their_gaps(reports):
    html = reports["both"]
    tables = html_tables(html)
    pooled = [t for t in tables if t["h2"] == H2 and t["h3"] != H3]
    assert len(pooled) == 1 and [th["sub"] for th in pooled[0]["head"][1:]] == ["seen", "unseen"]  # intact
    (t,) = [t for t in tables if t["h2"] == H2 and t["h3"] == H3]
    head = [" ".join(th["text"].split()) for th in t["head"]]
    assert head == ["score ↑", "seen", "unseen: new family", "gap to seen", "unseen: new range", "gap to seen"]
    rows = {r[0]["text"].split()[0]: r for r in t["rows"]}
    assert list(rows) == ["a", "b", "identity"]  # the control last
    assert re.search(r'<tr[^>]*class="control"><td>(<a [^>]*>)?identity(</a>)? <span class="control-tag"',
                     html[html.index(H3):])
    d = _values()
    want = split_gap(d, n_boot=REPORT_N_BOOT).set_index(["method", "group"])
    for method, row in rows.items():
        seen, fam, fam_gap, rng_, rng_gap = row[1:]
        assert seen["n"] == f"(n={2 * SEEN_FAMILIES * PER_STYLE})"
        for mean, gap, kind in ((fam, fam_gap, NEW_FAMILY), (rng_, rng_gap, NEW_RANGE)):
            w = want.loc[(method, kind)]
            assert mean["text"] == f"{w.mean_b:.3f}" and gap["n"] == f"(n={w.n_b})"
            assert gap["text"].split()[0] == f"{w.gap:+.3f}"
            assert f"[{w.ci_low:+.3f}, {w.ci_high:+.3f}]" in gap["text"]
            assert math.isclose(float(gap["v"]), w.gap, rel_tol=1e-9)
    assert float(rows["a"][3]["v"]) > 0.2 and abs(float(rows["a"][5]["v"])) < 0.1


def test_the_report_keeps_the_pooled_table_alone_with_one_kind(reports):
    html = reports["families"]
    assert H3 not in html
    assert [t for t in html_tables(html) if t["h2"] == H2]
