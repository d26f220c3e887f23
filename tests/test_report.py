"""The report: naming of stored method configurations, and direction-aware ranking checked against means computed
independently from the store and against ``sxbench.stats`` (intervals, paired comparisons). Rank groups with
significant differences, controls and the coverage header: ``test_report_stats.py``."""

from __future__ import annotations

import math
import re
import sqlite3
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sxbench.records import MethodInfo, MetricInfo, MetricValue, SampleRecord
from sxbench.report import REPORT_N_BOOT, config_labels, leaderboard, render
from sxbench.stats import method_ci, paired_differences
from sxbench.store import DB_NAME, Store


class _Tables(HTMLParser):
    """Every ``<table>`` of a page with the ``<h2>``/``<h3>`` headings above it, its header cells and its body cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self.h2 = self.h3 = ""
        self._heading: str | None = None
        self._cell: dict | None = None
        self._span: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("h2", "h3"):
            self._heading = tag
            setattr(self, tag, "")
            if tag == "h2":
                self.h3 = ""
        elif tag == "table":
            self.tables.append({"h2": self.h2, "h3": self.h3, "head": [], "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("th", "td") and self.tables:
            self._cell = {"text": "", "class": a.get("class") or "", "v": a.get("data-v"), "rank": None, "sub": None,
                          "n": None, "title": a.get("title")}
            if tag == "th":
                self.tables[-1]["head"].append(self._cell)
            else:
                self.tables[-1]["rows"][-1].append(self._cell)
        elif tag == "span" and self._cell is not None:
            self._span = a.get("class")
            if self._span == "rank":
                self._cell["rank"] = ""
            elif self._span == "muted":
                self._cell["sub"] = ""
            elif self._span == "n":
                self._cell["n"] = ""

    def handle_endtag(self, tag):
        if tag in ("h2", "h3"):
            self._heading = None
        elif tag in ("th", "td"):
            self._cell = None
        elif tag == "span":
            self._span = None

    def handle_data(self, data):
        if self._heading:
            setattr(self, self._heading, getattr(self, self._heading) + data.strip())
        if self._cell is not None:
            if self._span == "rank":
                self._cell["rank"] += data.strip()
            elif self._span == "muted":
                self._cell["sub"] += data.strip()
            elif self._span == "n":
                self._cell["n"] += data.strip()
            else:
                self._cell["text"] += data


def html_tables(html: str) -> list[dict]:
    """``[{"h2", "h3", "head": [cell], "rows": [[cell]]}]``; a cell is ``{"text", "class", "v" (data-v), "title",
    "rank" (text of its ``span.rank``), "sub" (text of its ``span.muted``), "n" (text of its ``span.n``)}``, text
    outside those spans in ``text``."""
    p = _Tables()
    p.feed(html)
    for t in p.tables:
        t["rows"] = [r for r in t["rows"] if r]
    return p.tables


def header_direction(th: dict) -> tuple[str, str]:
    """``("content_ssim", "↑")`` from a header cell reading ``content_ssim ↑``; exactly one arrow."""
    words = th["text"].split()
    arrows = [w for w in words if w in ("↑", "↓")]
    assert len(arrows) == 1 and words.index(arrows[0]) == 1, th["text"]
    return words[0], arrows[0]


def _info(name: str, **params) -> dict:
    return {"name": name, "version": "1", "params": params}


def test_config_labels_name_what_tells_configurations_apart():
    infos = {("reinhard", "aaaa1111"): _info("reinhard", strength=1.0),
             ("reinhard", "bbbb2222"): _info("reinhard", strength=0.5),
             ("identity", "cccc3333"): _info("identity"),
             ("adain", "dddd4444"): _info("adain", alpha=1.0, weights_sha256="69157d3e3b6e30ab91656471"),
             ("adain", "eeee5555"): _info("adain", alpha=1.0, colour="style", weights_sha256="69157d3e3b6e30ab91656471"),
             ("x", "ffff6666"): _info("x", p=1, reproduce="a"), ("x", "gggg7777"): _info("x", p=1, reproduce="b"),
             ("y", "hhhh8888"): _info("y", w="0123456789abcdef-long-1"),
             ("y", "iiii9999"): _info("y", w="0123456789abcdef-long-2")}
    labels = config_labels(infos)
    assert labels[("reinhard", "aaaa1111")] == "reinhard (strength=1.0)"
    assert labels[("reinhard", "bbbb2222")] == "reinhard (strength=0.5)"
    assert labels[("identity", "cccc3333")] == "identity"  # one configuration: the plain name
    assert labels[("adain", "dddd4444")] == "adain (colour=None)"  # a parameter one configuration lacks
    assert labels[("adain", "eeee5555")] == "adain (colour=style)"
    assert labels[("x", "ffff6666")] == "x (ffff6666)"  # no parameter differs: the configuration hash
    assert labels[("y", "hhhh8888")] == "y (hhhh8888)"  # shortened values would collide: the hashes
    # only the configurations present are named: one left, the plain name
    assert config_labels(infos, [("reinhard", "bbbb2222")]) == {("reinhard", "bbbb2222"): "reinhard"}


def test_report_shows_two_configurations_of_a_method_side_by_side(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sxbench.cli", "run", "--protocol", "synth-smoke", "--methods", "reinhard",
           "--metrics", "content_ssim", "--out", str(out), "--no-progress"]
    for extra in ([], ["--param", "reinhard.strength=0.5"]):
        p = subprocess.run(cmd + extra, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "8 generated" in p.stdout
    subprocess.run([sys.executable, "-m", "sxbench.cli", "export", str(out)], check=True, capture_output=True)
    df = pd.read_csv(out / "results.csv")
    df = df[(df.metric == "content_ssim") & (df.scope == "sample")]
    means = df.groupby("method_config").value.mean()
    assert len(means) == 2 and means.nunique() == 2
    html = (out / "index.html").read_text()
    rows = {}
    for name in ("reinhard (strength=1.0)", "reinhard (strength=0.5)"):
        m = re.search(re.escape(f'<tr data-method="{name}"><td>') + r'.*?</td>\s*<td[^>]*data-v="([^"]+)"', html)
        assert m, name  # a leaderboard row of its own
        rows[name] = float(m.group(1))
    # each row is its own configuration's mean, not the two pooled
    assert sorted(rows.values()) == pytest.approx(sorted(means), abs=1e-9)
    assert 'data-method="reinhard"' not in html


# ---------------------------------------------------------------------------------------------------------------
# Ranking by each metric's direction. A store written record by record with known values; every number, rank and
# "best" mark of the report is checked against means taken straight from the SQLite file with pandas, and against
# directions stated here (the metric names are made up, so nothing can come from a hard-coded list).

METHODS = ("alpha", "beta", "gamma")
LEVELS = ("color", "texture", "material", "stroke")
SPLITS = ("seen", "unseen")
HIB = {"score_up": True, "dist_down": False}
"""Each test metric's direction, stated independently of the store."""
GROUP = {"score_up": "fidelity", "dist_down": "style"}
# mean per method and level; the winner differs by level, and `unseen` shifts some methods, so an ungrouped mean
# or a flipped direction names another best method than the right one
LEVEL_MEANS = {
    "score_up": {"alpha": (0.90, 0.20, 0.50, 0.45), "beta": (0.30, 0.85, 0.40, 0.35),
                 "gamma": (0.55, 0.50, 0.70, 0.60)},
    "dist_down": {"alpha": (0.10, 0.60, 0.40, 0.30), "beta": (0.50, 0.20, 0.45, 0.55),
                  "gamma": (0.35, 0.40, 0.15, 0.52)},
}
UNSEEN_SHIFT = {"score_up": {"alpha": 0.25, "beta": 0.0, "gamma": -0.30},
                "dist_down": {"alpha": 0.35, "beta": -0.10, "gamma": 0.0}}
SET_VALUES = {  # (metric, higher_is_better) → subset → method → value
    ("set_down", False): {"all": {"alpha": 30.0, "beta": 12.5, "gamma": 20.0},
                          "split=seen": {"alpha": 9.0, "beta": 14.0, "gamma": 11.0},
                          "split=unseen": {"alpha": 40.0, "beta": 25.0, "gamma": 18.0}},
    ("set_up", True): {"all": {"alpha": 0.2, "beta": 0.7, "gamma": 0.4},
                       "split=seen": {"alpha": 0.9, "beta": 0.1, "gamma": 0.3}},
}


def _write_store(run: Path) -> None:
    rng = np.random.default_rng(0)
    with Store(run) as st:
        run_id = st.begin_run("made-up", {"protocol": "made-up", "seeds": [0]}, {})
        for metric, hib in HIB.items():
            st.register_metric(MetricInfo(metric, hib, (0.0, 1.0), GROUP[metric], frozenset({"content"})))
        infos = {m: MethodInfo(m, "1") for m in METHODS}
        for info in infos.values():
            st.register_method(info)
        for split in SPLITS:
            for li, level in enumerate(LEVELS):
                for c in range(3):
                    pair = f"c{c}__{level}-{split}"
                    for m in METHODS:
                        key = f"{m}:{pair}"
                        st.write_sample(
                            SampleRecord(key, run_id, m, infos[m].config_hash, "made-up", "1", pair, f"c{c}",
                                         f"{level}-{split}", 0, split, level, level, "ok", None, None, 0.01, 1, 1,
                                         "cpu_rss", "cpu"),
                            [MetricValue(key, metric, LEVEL_MEANS[metric][m][li]
                                         + (UNSEEN_SHIFT[metric][m] if split == "unseen" else 0.0)
                                         + float(rng.normal(0, 0.03)), hib, GROUP[metric], "1", None)
                             for metric, hib in HIB.items()])
        for (metric, hib), subsets in SET_VALUES.items():
            info = MetricInfo(metric, hib, (0.0, math.inf), "quality", frozenset({"style"}))
            st.register_metric(info)
            for subset, by_method in subsets.items():
                for m, v in by_method.items():
                    st.write_set_value(m, infos[m].config_hash, info, subset, v, 12, "digest")
        st.finish_run(run_id)


@pytest.fixture(scope="module")
def ranked(tmp_path_factory):
    """``(run folder, html tables, values read from SQLite by the test)``."""
    run = tmp_path_factory.mktemp("ranked")
    _write_store(run)
    render(run)
    with sqlite3.connect(run / DB_NAME) as c:
        ref = pd.read_sql_query("SELECT s.method, s.split, s.level, s.pair_id, s.style_id, s.content_id, s.seed, "
                                "v.metric, v.value FROM metric_values v JOIN samples s ON s.sample_key = v.sample_key",
                                c)
    assert len(ref) == len(METHODS) * len(SPLITS) * len(LEVELS) * 3 * len(HIB)
    return run, html_tables((run / "index.html").read_text()), ref


def _reference(ref: pd.DataFrame, metric: str, by: str | None = None) -> dict[str, pd.DataFrame]:
    """Per column (``"all"`` or each value of ``by``), per method: mean and count (pandas, from SQLite), rank by mean
    (1 = best by ``HIB``), the half-width of ``sxbench.stats.method_ci``'s interval, and the rank group: the best
    mean, then ``paired_differences`` against it, methods not significantly worse (Holm p ≥ 0.05 or a difference in
    their favour) in its group, the rest grouped again the same way."""
    d = ref[ref.metric == metric]
    out = {}
    for col, g in ([("all", d)] if by is None else d.groupby(by)):
        t = g.groupby("method").value.agg(["mean", "count"])
        order = sorted(t.index, key=lambda m: t.loc[m, "mean"], reverse=HIB[metric])  # best first
        t["rank"] = [order.index(m) + 1 for m in t.index]
        ci = method_ci(g, n_boot=REPORT_N_BOOT).set_index("method")
        t["ci"] = (ci.ci_high - ci.ci_low) / 2
        group, remaining = {}, order
        while remaining:
            best = remaining[0]
            group[best] = len(set(group.values())) + 1
            if len(remaining) == 1:
                break
            diffs = paired_differences(g[g.method.isin(remaining)], best, n_boot=REPORT_N_BOOT).set_index("method")
            worse = {m for m, r in diffs.iterrows() if r.p_holm < 0.05 and (r["diff"] < 0) == HIB[metric]}
            group |= {m: group[best] for m in remaining[1:] if m not in worse}
            remaining = [m for m in remaining if m in worse]
        t["group"] = pd.Series(group)
        out[col] = t
    return out


def test_the_design_tells_directions_and_groupings_apart(ranked):
    """The fixture's values make every later check discriminating: a flipped direction, or a split or level table
    showing the overall mean, names another best method."""
    _, _, ref = ranked
    for metric in HIB:
        overall = _reference(ref, metric)["all"]
        assert overall["mean"].idxmax() != overall["mean"].idxmin()
        best = overall["rank"].idxmin()
        for by in ("split", "level"):
            winners = {col: t["rank"].idxmin() for col, t in _reference(ref, metric, by).items()}
            assert set(winners.values()) - {best}, (metric, by, winners)


def test_leaderboard_cells_and_rank_groups_follow_each_metric_direction(ranked):
    """Mean, interval, n and rank group of every cell, and the column's best (named in each cell's tooltip) by the
    metric's direction. (With 8 styles and 3 contents nothing here is significant: every method is in group 1;
    ``test_report_stats.py`` has groups that differ.)"""
    _, tables, ref = ranked
    boards = [t for t in tables if t["h2"] == "Leaderboard" and t["h3"] != "set metrics"]
    assert [t["h3"] for t in boards] == ["fidelity", "style"]
    seen = set()
    for t in boards:
        assert t["head"][0]["text"] == "method" and [r[0]["text"].strip() for r in t["rows"]] == list(METHODS)
        for j, th in enumerate(t["head"][1:], 1):
            metric, arrow = header_direction(th)
            assert arrow == ("↑" if HIB[metric] else "↓"), th["text"]
            want = _reference(ref, metric)["all"]
            for row in t["rows"]:
                method, cell = row[0]["text"].strip(), row[j]
                assert float(cell["v"]) == pytest.approx(want.loc[method, "mean"], abs=1e-12)
                mean_text, ci_text = cell["text"].split("±")
                assert float(mean_text) == pytest.approx(want.loc[method, "mean"], abs=5e-4)
                assert float(ci_text) == pytest.approx(want.loc[method, "ci"], abs=5e-4)
                assert cell["n"] == f"(n={want.loc[method, 'count']})"  # one seed: a pair per value
                assert int(cell["rank"]) == want.loc[method, "group"], (metric, method)
                assert ("best" in cell["class"].split()) == (want.loc[method, "group"] == 1), (metric, method)
                best = want["rank"].idxmin()
                assert ("best mean of the column" in cell["title"]) == (method == best), (metric, method)
                assert method == best or f"minus {best} (the column's best)" in cell["title"], (metric, cell["title"])
            seen.add(metric)
    assert seen == set(HIB)


@pytest.mark.parametrize("by, h2", [("split", "Seen vs unseen styles"), ("level", "Per style level")])
def test_split_and_level_tables_rank_within_each_group(ranked, by, h2):
    run, tables, ref = ranked
    tables = [t for t in tables if t["h2"] == h2]
    assert tables
    checked = set()
    for t in tables:
        if by == "split":  # one table per group: a column per (metric, split)
            heads = [(*header_direction(th), th["sub"]) for th in t["head"][1:]]
        else:  # one table per metric: a column per level, the metric in the corner
            metric, arrow = header_direction(t["head"][0])
            heads = [(metric, arrow, th["text"].strip()) for th in t["head"][1:]]
            assert [h[2] for h in heads] == list(LEVELS)
        for j, (metric, arrow, col) in enumerate(heads, 1):
            assert arrow == ("↑" if HIB[metric] else "↓")
            want = _reference(ref, metric, by)[col]
            rows = {r[0]["text"].strip(): r[j] for r in t["rows"]}
            assert set(rows) == set(METHODS)
            for method, cell in rows.items():
                assert float(cell["v"]) == pytest.approx(want.loc[method, "mean"], abs=1e-12), (metric, col, method)
                assert cell["n"] == f"(n={want.loc[method, 'count']})", (metric, col, method)
                assert ("best" in cell["class"].split()) == (want.loc[method, "group"] == 1), (metric, col, method)
                best = want["rank"].idxmin()  # the winner differs by column: a pooled or flipped best shows here
                assert ("best mean of the column" in cell["title"]) == (method == best), (metric, col, method)
            checked.add((metric, col))
    assert checked == {(m, c) for m in HIB for c in (SPLITS if by == "split" else LEVELS)}
    # the groups behind the marks (the page shows them in the overall table only), and each column's best
    with Store(run) as st:
        board = leaderboard(st.values(), by)
    for metric in HIB:
        for col, want in _reference(ref, metric, by).items():
            assert {m: c.group for m, c in board[metric][col].items()} == want["group"].to_dict(), (metric, col)
            best = want["rank"].idxmin()
            assert {c.against for m, c in board[metric][col].items() if m != best} == {best}, (metric, col)


def test_set_metric_cells_show_their_n_and_no_best(ranked):
    """Set metrics have one value per method and subset and no interval: every cell shows its N, none is marked
    best, and the note does not say they rank methods."""
    _, tables, _ = ranked
    (t,) = [t for t in tables if t["h3"] == "set metrics"]
    heads = [(*header_direction(th), th["sub"]) for th in t["head"][1:]]
    want_heads = sorted(((m, "↑" if hib else "↓", sub) for (m, hib), subs in SET_VALUES.items() for sub in subs),
                        key=lambda h: (h[0], h[2] != "all", h[2]))
    assert heads == want_heads
    rows = {r[0]["text"].strip(): r[1:] for r in t["rows"]}
    assert set(rows) == set(METHODS)
    for j, (metric, arrow, subset) in enumerate(heads):
        vals = SET_VALUES[(metric, arrow == "↑")][subset]
        for method, cells in rows.items():
            assert float(cells[j]["v"]) == vals[method]
            assert float(cells[j]["text"]) == pytest.approx(vals[method], abs=5e-4)
            assert cells[j]["n"] == "(N=12)"
            assert "best" not in cells[j]["class"].split(), (metric, subset, method)
