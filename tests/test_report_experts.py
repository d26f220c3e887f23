"""The report's expert section reads the expert statistics the evaluator stored (``set_values``, group ``experts``)
instead of computing them; stores holding routing but no statistics say so. Also: the set-metric table leaves the
expert rows out, the export labels them ``scope = experts``, and the level figure's intervals are seaborn's."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import header_direction, html_tables

from sxbench.metrics.experts import DIRECTIONS, EXPERT_METRICS, expert_stats
from sxbench.records import MethodInfo, MetricInfo, MetricValue, SampleRecord
from sxbench.report import LEVEL_ORDER, NOT_COMPUTED, _level_stats, export, render
from sxbench.store import Store

MOE, PLAIN = MethodInfo("moe", "1"), MethodInfo("plain", "1")
NUM_EXPERTS = 4
STYLES = {  # style_id → (family, level, {layer: top-2 experts})
    "s0": ("oil", "texture", {"l0": (0, 1), "l1": (2, 3)}),
    "s1": ("oil", "texture", {"l0": (0, 1), "l1": (2, 0)}),
    "s2": ("ink", "stroke", {"l0": (2, 3), "l1": (1, 3)}),
    "s3": ("ink", "stroke", {"l0": (2, 0), "l1": (1, 3)}),
}
STORED = {  # made-up statistics, none of them what expert_stats gives for the routing above; one NULL
    "expert_load_entropy": 0.1234, "expert_dead_fraction": 0.5, "expert_load_cv": 2.71828,
    "expert_family_mi": 0.0421, "routing_iou_similar": 0.875, "routing_iou_related": None,
    "routing_iou_dissimilar": 0.0625,
}
SAMPLE_METRIC = MetricInfo("score_up", True, (0.0, 1.0), "fidelity", frozenset({"content"}))
SET_METRIC = MetricInfo("set_down", False, (0.0, math.inf), "quality", frozenset({"style"}), scope="set")


def _routing(style: str) -> list[tuple[str, int, int, float, int]]:
    return [(layer, slot, e, 0.5, NUM_EXPERTS) for layer, experts in STYLES[style][2].items()
            for slot, e in enumerate(experts)]


def write_store(run: Path, *, expert_values: bool) -> None:
    """Two contents × four styles for a mixture method (with routing) and a plain one, a per-sample and a set
    metric; with ``expert_values``, the expert statistics stored as the evaluator stores them."""
    rng = np.random.default_rng(0)
    with Store(run) as st:
        run_id = st.begin_run("made-up", {"protocol": "made-up", "seeds": [0]}, {})
        st.register_metric(SAMPLE_METRIC)
        st.register_metric(SET_METRIC)
        for info in (MOE, PLAIN):
            st.register_method(info)
            for style, (family, level, _) in STYLES.items():
                for content in ("c0", "c1"):
                    key = f"{info.name}:{content}:{style}"
                    sample = SampleRecord(
                        sample_key=key, run_id=run_id, method=info.name, method_config=info.config_hash,
                        protocol="made-up", protocol_version="1", pair_id=f"{content}__{style}", content_id=content,
                        style_id=style, seed=0, split="seen", level=level, family=family, status="ok", error=None,
                        output_path=None, latency_s=0.01, batch_size=1, peak_memory_bytes=1, memory_kind="cpu_rss",
                        device="cpu")
                    value = MetricValue(key, SAMPLE_METRIC.name, float(rng.uniform()), True, "fidelity", "1", None)
                    st.write_sample(sample, [value], _routing(style) if info is MOE else ())
            st.write_set_value(info.name, info.config_hash, SET_METRIC, "all", 3.0 if info is MOE else 4.0, 8, "h")
        if expert_values:
            for metric in EXPERT_METRICS:
                if metric.info.name not in STORED:  # the chance statistics: tests/test_expert_chance.py
                    continue
                st.register_metric(metric.info)
                st.write_set_value(MOE.name, MOE.config_hash, metric.info, "all", STORED[metric.info.name],
                                   len(STYLES), "h")
        st.finish_run(run_id)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """``(run folder, html, tables)`` of a store with expert statistics."""
    run = tmp_path_factory.mktemp("stored")
    write_store(run, expert_values=True)
    render(run)
    html = (run / "index.html").read_text()
    return run, html, html_tables(html)


def _expert_table(tables: list[dict]) -> dict:
    (t,) = [t for t in tables if t["h2"] == "Expert utilization"]
    return t


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))


def test_expert_table_shows_the_stored_statistics(stored):
    run, _, tables = stored
    t = _expert_table(tables)
    assert [th["text"] for th in t["head"][:3]] == ["method", "styles", "experts"]
    heads = [header_direction(th) for th in t["head"][3:]]
    assert [h[0] for h in heads] == list(DIRECTIONS)  # the statistics' own order
    assert all(arrow == ("↑" if DIRECTIONS[name] else "↓") for name, arrow in heads)
    (row,) = t["rows"]  # the mixture method only
    assert [c["text"] for c in row[:3]] == ["moe", str(len(STYLES)), str(NUM_EXPERTS)]
    with Store(run) as st:
        computed = expert_stats(st.routing(), NUM_EXPERTS).values
    for (name, _), cell in zip(heads, row[3:]):
        want = STORED[name]
        if want is None:  # NULL in the store: a dash, no sort value
            assert cell["text"] == "–" and cell["v"] == ""
            continue
        assert cell["text"] == f"{want:.3f}" and float(cell["v"]) == want
        assert not math.isclose(want, computed[name]), name  # read, not recomputed
    assert (run / "figures" / "expert_usage.png").is_file() and (run / "figures" / "routing_iou.png").is_file()


def test_expert_statistics_stay_out_of_the_other_tables(stored):
    _, html, tables = stored
    (sets,) = [t for t in tables if t["h3"] == "set metrics"]
    assert [header_direction(th) for th in sets["head"][1:]] == [("set_down", "↓")]
    assert {r[0]["text"].strip() for r in sets["rows"]} == {"moe", "plain"}
    for t in tables:
        if t["h2"] != "Expert utilization":
            names = {w for th in t["head"] for w in th["text"].split()} | {r[0]["text"] for r in t["rows"] if r}
            assert not names & set(DIRECTIONS), (t["h2"], t["h3"])
    assert NOT_COMPUTED.split(":")[0] not in _text(html)


def test_routing_without_stored_statistics_says_not_computed(tmp_path, caplog):
    write_store(tmp_path, expert_values=False)
    with caplog.at_level(logging.INFO, logger="sxbench.report"):
        render(tmp_path)
    html = (tmp_path / "index.html").read_text()
    assert NOT_COMPUTED.replace("`", "") in _text(html)
    t = _expert_table(html_tables(html))
    (row,) = t["rows"]  # in the table's footer, out of the sortable body
    assert [c["text"] for c in row[:3]] == ["moe", str(len(STYLES)), str(NUM_EXPERTS)]
    assert len(row) == 4 and "not computed" in row[3]["text"]
    assert [header_direction(th)[0] for th in t["head"][3:]] == list(DIRECTIONS)
    assert "figures/expert_usage.png" in html and "figures/routing_iou.png" not in html  # no stored IoU to plot
    phases = [r.getMessage() for r in caplog.records if r.getMessage().startswith("report: ")]
    assert phases == ["report: reading the store",
                      "report: leaderboard intervals and rank groups (1000 bootstrap replicates)",
                      f"report: per-sample data for the explorer ({len(STYLES) * 4} samples)", "report: figures (1)",
                      "report: expert section", "report: writing index.html"]


def test_export_labels_expert_rows(stored, tmp_path):
    run, _, _ = stored
    df = pd.read_csv(export(run, "csv", tmp_path / "results.csv"))
    assert {"method", "method_config", "split", "metric", "value", "higher_is_better", "metric_group",
            "metric_version", "scope", "n"} <= set(df.columns)
    experts = df[df.scope == "experts"]
    assert sorted(experts.metric) == sorted(DIRECTIONS) and set(experts.method) == {"moe"}
    assert (experts.split == "all").all() and (experts.n == len(STYLES)).all()
    assert (experts.metric_group == "experts").all()
    assert dict(zip(experts.metric, experts.higher_is_better)) == DIRECTIONS
    got = dict(zip(experts.metric, experts.value))
    assert all(math.isnan(got[k]) if v is None else got[k] == pytest.approx(v) for k, v in STORED.items())
    assert df[df.scope == "set"].metric.tolist() == ["set_down", "set_down"]
    assert (df[df.scope == "sample"].metric == "score_up").all() and (df.scope == "sample").sum() == 16


def test_level_intervals_are_seaborns():
    """The level figure's bars and intervals are the numbers ``sns.barplot(errorbar=("ci", 95), n_boot=200,
    seed=0)`` computes, resamples included."""
    from seaborn._statistics import EstimateAggregator

    rng = np.random.default_rng(1)
    rows = [{"metric": m, "method": meth, "level": lv, "value": v}
            for m in ("a", "b") for meth in ("x", "y") for lv, n in zip(LEVEL_ORDER[:3], (1, 5, 12))
            for v in rng.normal(size=n)]
    rows.append({"metric": "a", "method": "x", "level": "texture", "value": math.nan})  # dropped, as seaborn does
    values = pd.DataFrame(rows)
    levels = list(LEVEL_ORDER[:3])
    agg = EstimateAggregator("mean", ("ci", 95), n_boot=200, seed=0)
    got = _level_stats(values, levels)
    assert set(got) == {(m, meth) for m in ("a", "b") for meth in ("x", "y")}
    for (metric, method), bars in got.items():
        assert [b[0] for b in bars] == [0, 1, 2]
        for pos, mean, lo, hi in bars:
            d = values[(values.metric == metric) & (values.method == method) & (values.level == levels[pos])]
            want = agg(d.dropna().rename(columns={"value": "y"}), "y")
            assert mean == pytest.approx(want["y"], rel=1e-12)
            if pos == 0:  # one value: no interval
                assert math.isnan(lo) and math.isnan(hi) and math.isnan(want["ymin"])
            else:
                assert (lo, hi) == pytest.approx((want["ymin"], want["ymax"]), rel=1e-12)
