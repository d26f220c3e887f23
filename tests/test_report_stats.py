"""The leaderboard's statistics (issue 17): clustered intervals with n in every cell, rank groups from paired
differences, controls as reference rows, the seeds and pairs a table covers, set metrics without a "best".

A store written record by record with known effects, in a crossed design like ``synth``'s (styles × contents, each
style with 4 contents, each content in 8 pairs): ``a`` and ``b`` differ by 1e-4 (not significant), ``c`` is 0.1
worse, and ``identity`` (a control) is 0.3 better than everyone. A second store holds the same values under seeds
0 and 1 (the methods are deterministic), written by two invocations, the first with ``--limit``."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import html_tables

from sxbench import registry
from sxbench.records import MethodInfo, MetricInfo, MetricValue, SampleRecord
from sxbench.report import REPORT_N_BOOT, Cell, is_control, leaderboard, leaderboards, rank_groups, render
from sxbench.stats import method_ci, paired_differences
from sxbench.store import Store

N_STYLES, N_CONTENTS, PER_STYLE = 24, 12, 4
LEVELS = ("color", "texture", "material", "stroke")
RANKED = ("a", "b", "c")
CONTROL_ROW = r'<tr[^>]*class="control"><td>(?:<a [^>]*>)?identity(?:</a>)? <span class="control-tag"'
"""A control's row in a method table (its name links to the sample explorer)."""
CONTROL = "identity"
METRICS = {"score_up": (True, "fidelity"), "dist_down": (False, "style")}
"""``name: (higher_is_better, group)``; ``dist_down`` = 1 − ``score_up``, so its order is the reverse."""
PAIRS = [(s, (3 * s + k) % N_CONTENTS) for s in range(N_STYLES) for k in range(PER_STYLE)]
"""(style, content): 96 pairs, every content in 8 of them."""


def _level(s: int) -> str:
    return LEVELS[s % len(LEVELS)]


def _split(s: int) -> str:
    return "unseen" if s % 3 == 0 else "seen"


def _scores() -> dict[str, np.ndarray]:
    """``score_up`` of each method on each pair: style and content effects shared by all methods, ``b`` = ``a`` + 1e-4
    + noise of mean exactly 0, ``c`` = ``a`` − 0.1 + noise, ``identity`` = ``a`` + 0.3."""
    rng = np.random.default_rng(17)
    style, content = rng.normal(0, 0.1, N_STYLES), rng.normal(0, 0.05, N_CONTENTS)
    a = np.array([0.5 + style[s] + content[c] for s, c in PAIRS]) + rng.normal(0, 0.02, len(PAIRS))
    noise = rng.normal(0, 0.01, len(PAIRS))
    return {"a": a, "b": a + 1e-4 + (noise - noise.mean()), "c": a - 0.1 + rng.normal(0, 0.02, len(PAIRS)),
            CONTROL: a + 0.3}


def _write_store(run: Path, invocations: list[tuple[list[int], int | None]]) -> None:
    """One run per ``(seeds, limit)``: the first ``limit`` pairs (all with ``None``) under each seed, the same value
    for every seed (deterministic methods). A control registered with ``control=True``; set values of ``fid`` for
    a set of 96 and a set of 6 (below its ``min_samples``: stored NULL, as the evaluator does)."""
    scores = _scores()
    fid = registry.metrics.get("fid").info
    with Store(run) as st:
        infos = {m: MethodInfo(m, "1", control=(m == CONTROL)) for m in scores}
        for metric, (hib, group) in METRICS.items():
            st.register_metric(MetricInfo(metric, hib, (-1.0, 2.0), group, frozenset({"content"})))
        st.register_metric(fid)
        for info in infos.values():
            st.register_method(info)
        for seeds, limit in invocations:
            chosen = PAIRS[:limit] if limit else PAIRS
            run_id = st.begin_run("made-up", {"protocol": "made-up", "seeds": seeds, "limit": limit,
                                              "n_pairs": len(chosen)}, {})
            for i, (s, c) in enumerate(chosen):
                pair = f"c{c}__s{s}"
                for m, info in infos.items():
                    for seed in seeds:
                        key = f"{m}:{pair}:{seed}"
                        v = float(scores[m][i])
                        st.write_sample(
                            SampleRecord(key, run_id, m, info.config_hash, "made-up", "1", pair, f"c{c}", f"s{s}",
                                         seed, _split(s), _level(s), f"fam{s % 6}", "ok", None, None, 0.01, 1, 1,
                                         "cpu_rss", "cpu"),
                            [MetricValue(key, metric, v if hib else 1.0 - v, hib, group, "1", None)
                             for metric, (hib, group) in METRICS.items()])
            st.finish_run(run_id)
        for m, info in infos.items():
            st.write_set_value(m, info.config_hash, fid, "all", 100.0 + len(m), len(PAIRS), "digest")
            st.write_set_value(m, info.config_hash, fid, "split=tiny", None, 6, "digest")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """``{"one": (run, html), "two": (run, html)}``: seed 0 alone; seeds 0 and 1 (two invocations)."""
    out = {}
    for name, invocations in (("one", [([0], None)]), ("two", [([0], 48), ([0, 1], None)])):
        run = tmp_path_factory.mktemp(name)
        _write_store(run, invocations)
        render(run)
        out[name] = (run, (run / "index.html").read_text())
    return out


def _values(run: Path) -> pd.DataFrame:
    with Store(run) as st:
        return st.values()


def _boards(html: str) -> list[dict]:
    return [t for t in html_tables(html) if t["h2"] == "Leaderboard" and t["h3"] != "set metrics"]


def test_the_design_has_a_tiny_and_a_clear_difference(stores):
    """What the later checks rely on: ``a`` and ``b`` are not significantly apart, ``c`` is, and ``identity`` has
    the best mean of every column."""
    values = _values(stores["one"][0])
    ranked = values[values.method != CONTROL]
    for metric, (hib, _) in METRICS.items():
        means = values[values.metric == metric].groupby("method").value.mean()
        assert means.idxmax() == (CONTROL if hib else "c") and means.idxmin() == ("c" if hib else CONTROL)
        best = means[list(RANKED)].idxmax() if hib else means[list(RANKED)].idxmin()
        d = paired_differences(ranked, best, metric=metric, n_boot=REPORT_N_BOOT).set_index("method")
        other = ({"a", "b"} - {best}).pop()
        assert d.loc[other, "p_holm"] > 0.3 and d.loc["c", "p_holm"] < 1e-3, d


def test_rank_groups_bold_the_methods_not_significantly_worse_than_the_best(stores):
    _, html = stores["one"]
    boards = _boards(html)
    assert [t["h3"] for t in boards] == ["fidelity", "style"]
    for t in boards:
        names = [r[0]["text"].split()[0] for r in t["rows"]]
        assert names == [*RANKED, CONTROL]  # the control last, as a reference row
        rows = dict(zip(names, t["rows"]))
        for j in range(1, len(t["head"])):
            for m in ("a", "b"):
                assert "best" in rows[m][j]["class"].split() and rows[m][j]["rank"] == "1", (t["h3"], m)
            assert "best" not in rows["c"][j]["class"].split() and rows["c"][j]["rank"] == "2"
            control = rows[CONTROL][j]
            assert "best" not in control["class"].split() and control["rank"] is None
            assert "control" in control["title"]
    assert len(re.findall(CONTROL_ROW, html)) >= 2


def test_controls_are_never_ranked_in_any_table(stores):
    for by in (None, "split", "level"):
        board = leaderboard(_values(stores["one"][0]), by, controls={CONTROL})
        for metric, columns in board.items():
            for column, cells in columns.items():
                control = cells[CONTROL]
                assert control.control and control.group is None and not control.best and control.against is None
                assert CONTROL not in {c.against for c in cells.values()}, (metric, column)
                assert {c.group for m, c in cells.items() if m != CONTROL} <= {1, 2, 3}
                if by is None:  # the best of the ranked methods, though identity's mean is better
                    assert {m for m, c in cells.items() if c.best} == {"a", "b"}, (metric, cells)


def test_every_leaderboard_cell_shows_its_n(stores):
    """n in every cell of the leaderboard, split and level tables: the pairs of that column (seeds averaged)."""
    for name in ("one", "two"):
        html = stores[name][1]
        tables = [t for t in html_tables(html) if t["h2"] in ("Leaderboard", "Seen vs unseen styles", "Per style level")
                  and t["h3"] != "set metrics"]
        assert {t["h2"] for t in tables} == {"Leaderboard", "Seen vs unseen styles", "Per style level"}
        want = {"all": len(PAIRS)}
        want |= pd.Series([_split(s) for s, _ in PAIRS]).value_counts().to_dict()
        want |= pd.Series([_level(s) for s, _ in PAIRS]).value_counts().to_dict()
        for t in tables:
            if t["h2"] == "Per style level":
                columns = [th["text"].strip() for th in t["head"][1:]]
            elif t["h2"] == "Seen vs unseen styles":
                columns = [th["sub"] for th in t["head"][1:]]
            else:
                columns = ["all"] * (len(t["head"]) - 1)
            for row in t["rows"]:
                for col, cell in zip(columns, row[1:]):
                    assert cell["n"] == f"(n={want[col]})", (name, t["h2"], col, row[0]["text"])


def test_the_header_names_the_seeds_and_pairs_covered(stores):
    one, two = stores["one"][1], stores["two"][1]
    assert "These tables cover 96 pairs of made-up and seed 0: every value in the store" in one
    assert "seeds stored 0;" in one
    assert "These tables cover 96 pairs of made-up and seeds 0, 1: every value in the store" in two
    assert "seeds stored 0, 1;" in two
    # each invocation: its seeds and its --limit
    assert "2 invocation(s) wrote to it: seeds 0 on <code>--limit 48</code> (48 pairs of made-up); " \
           "seeds 0, 1 on all 96 pairs of made-up." in two


def test_a_deterministic_method_with_two_seeds_has_its_one_seed_interval(stores):
    """Seeds are averaged per pair first: duplicates of a deterministic method do not shrink its interval."""
    one, two = _values(stores["one"][0]), _values(stores["two"][0])
    assert len(two) == 2 * len(one)
    for by in (None, "split", "level"):
        b1, b2 = leaderboard(one, by, controls={CONTROL}), leaderboard(two, by, controls={CONTROL})
        assert b1.keys() == b2.keys()
        for metric in b1:
            for column, cells in b1[metric].items():
                for m, c in cells.items():
                    d = b2[metric][column][m]
                    assert (d.n, d.group, d.best) == (c.n, c.group, c.best)
                    assert d.mean == pytest.approx(c.mean, abs=1e-12) and d.ci == pytest.approx(c.ci, abs=1e-12)
    cells = [(r[0]["text"], [c["text"] + c["n"] for c in r[1:]]) for t in _boards(stores["one"][1]) for r in t["rows"]]
    assert cells == [(r[0]["text"], [c["text"] + c["n"] for c in r[1:]])
                     for t in _boards(stores["two"][1]) for r in t["rows"]]


@pytest.mark.parametrize("by", [None, "level"])
def test_the_leaderboard_numbers_are_those_of_sxbench_stats(stores, by):
    """Each cell's mean, interval and n are ``method_ci``'s; each comparison with the column's best is
    ``paired_differences``'s over the ranked methods (Holm among them), with the report's replicates."""
    values = _values(stores["two"][0])
    board = leaderboard(values, by, controls={CONTROL})
    ci = method_ci(values, by=by, n_boot=REPORT_N_BOOT)
    checked = 0
    for r in ci.itertuples():
        cell = board[r.metric]["all" if by is None else r.level][r.method]
        assert cell.n == r.n and cell.mean == pytest.approx(r.mean, abs=1e-12)
        assert cell.ci == pytest.approx((r.ci_high - r.ci_low) / 2, rel=1e-9)
        checked += 1
    assert checked == len(METRICS) * (len(RANKED) + 1) * (1 if by is None else len(LEVELS))
    ranked = values[values.method != CONTROL]
    for metric, columns in board.items():
        for column, cells in columns.items():
            best = next(m for m, c in cells.items() if c.group == 1 and c.against is None and not c.control)
            rows = ranked if by is None else ranked[ranked[by] == column]
            diffs = paired_differences(rows, best, metric=metric, n_boot=REPORT_N_BOOT).set_index("method")
            for m, d in diffs.iterrows():
                cell = cells[m]
                assert cell.against == best and cell.n_paired == d.n
                assert (cell.diff, cell.diff_low, cell.diff_high, cell.p_holm) == pytest.approx(
                    (d["diff"], d.ci_low, d.ci_high, d.p_holm), rel=1e-9, abs=1e-12)


def test_rank_groups_iterate_with_each_direction():
    """Group 1: the best and those not significantly worse; then the same rule on the rest. A significant
    difference in a method's favour (possible when it lacks some pairs) or one without an interval does not
    move it down."""
    means = {"p": 1.0, "q": 0.95, "r": 0.6, "s": 0.55, "t": 0.1, "u": 0.9, "v": 0.2}

    def compare(m, against):
        diff = means[m] - means[against]
        if m == "u":  # no common pair with anyone: no interval
            return 0, math.nan, math.nan, math.nan, math.nan
        if m == "v" and against == "p":  # on the pairs it shares with p, v is better
            return 10, 0.05, 0.01, 0.09, 1e-6
        return 50, diff, diff - 0.1, diff + 0.1, 1e-6 if abs(diff) > 0.2 else 0.5

    groups = {m: g for m, (g, _) in rank_groups(means, compare, True).items()}
    assert groups == {"p": 1, "q": 1, "u": 1, "v": 1, "r": 2, "s": 2, "t": 3}
    # lower is better: the same values read the other way round
    groups = {m: g for m, (g, _) in rank_groups({k: v for k, v in means.items() if k not in "uv"}, compare,
                                                False).items()}
    assert groups == {"t": 1, "s": 2, "r": 2, "q": 3, "p": 3}
    # the comparison kept is with the column's best, Holm-adjusted over the methods compared with it
    kept = rank_groups({"p": 1.0, "q": 0.95, "r": 0.6}, compare, True)
    assert kept["p"] == (1, None)
    assert kept["r"][1][0] == "p" and kept["r"][1][5] == pytest.approx(2e-6)  # Holm: 2 tests, smallest p × 2


def test_control_flag():
    assert MethodInfo("x", "1", control=True).config_hash == MethodInfo("x", "1").config_hash
    assert registry.create_method("identity").info.control and registry.create_method("stylecopy").info.control
    assert not registry.create_method("reinhard").info.control
    assert is_control({"name": "mine", "control": True}) and not is_control({"name": "mine"})
    # stores written before the field: the in-repo controls by name; a stored field always wins
    assert is_control({"name": "identity"}) and is_control({"name": "stylecopy"})
    assert not is_control({"name": "identity", "control": False})


def test_set_metrics_show_n_never_a_best_and_too_small_sets(stores):
    _, html = stores["one"]
    (t,) = [t for t in html_tables(html) if t["h3"] == "set metrics"]
    assert [(th["text"].split()[0], th["sub"]) for th in t["head"][1:]] == [("fid", "all"), ("fid", "split=tiny")]
    min_n = registry.metrics.get("fid").min_samples
    assert 6 < min_n <= len(PAIRS)
    for row in t["rows"]:
        method = row[0]["text"].split()[0]
        full, tiny = row[1], row[2]
        assert float(full["text"]) == 100.0 + len(method) and full["n"] == f"(N={len(PAIRS)})"
        assert tiny["sub"] == "n too small" and tiny["n"] == "(N=6)" and tiny["text"] == ""
        assert "best" not in full["class"] + tiny["class"]
    note = html[html.index("<h3>set metrics</h3>"):html.index("<table", html.index("<h3>set metrics</h3>"))]
    assert "paired bootstrap difference" in note and "they rank methods" not in note


def test_empty_cells():
    assert Cell(math.nan, math.nan, 0, None, False).text == "–"
    assert leaderboards(pd.DataFrame()) == {None: {}, "split": {}, "level": {}}


def test_the_summary_names_rank_group_one_never_a_control_and_says_why(stores):
    """``summary.leaders``: a and b (a tie by construction) lead, with b's paired difference from a and its CI;
    c alone is "ahead of every other ranked method" with its margin over the closest; the control, better than
    all, is never named."""
    from sxbench.report import summary

    board = leaderboard(_values(stores["one"][0]), None, controls={CONTROL})
    lead = summary.leaders(board["score_up"]["all"])
    assert sorted(lead["methods"]) == ["a", "b"] and CONTROL not in lead["methods"]
    assert "not separable" in lead["why"] and f"n={len(PAIRS)}" in lead["why"]
    one = leaderboard(_values(stores["one"][0]).query(f"method in ['c', '{CONTROL}']"), None, controls={CONTROL})
    alone = summary.leaders(one["score_up"]["all"])
    assert alone["methods"] == ["c"] and alone["why"] == "the only ranked method"
    only_control = summary.leaders({CONTROL: board["score_up"]["all"][CONTROL]})
    assert only_control is None
    two = leaderboard(_values(stores["one"][0]).query("method != 'b'"), None, controls={CONTROL})
    lead = summary.leaders(two["score_up"]["all"])
    assert lead["methods"] == ["a"] and lead["why"].startswith("ahead of every other ranked method; the closest, c,")
