"""The report and export trust nothing in the store: user strings are drawn and written literally (no mathtext, HTML
escaped, no spreadsheet formulas), custom levels are shown, stored paths stay inside the run folder and failed
(NULL) metric values count nowhere."""

from __future__ import annotations

import csv
import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import sxbench.report as report
from sxbench.records import MethodInfo, MetricInfo, MetricValue, SampleRecord
from sxbench.report import export, leaderboard, render
from sxbench.store import Store

SPLITS = (r"$\foo$", "_held out")  # a label starting with "_" is one matplotlib leaves out of legends
LEVELS = ("ink wash", "color", "texture")  # a custom level, listed first: the report puts it after the known ones
FAMILY = "<i>fam</i> $x$_y"
METHODS = ("alpha", "beta")
FORMULA_ID = "=cmd()"
"""A content id a spreadsheet would run."""
METRICS = {"score_up": (True, "fidelity"), "dist_down": (False, "style"), "broken": (True, "style")}
"""``name: (higher_is_better, group)``; ``broken`` failed on every sample (all its values NULL) and is its group's
first by name, the one the trade-off figure would otherwise plot."""
CRAFTED = {("beta", 0): "/etc/hostname", ("beta", 1): "../outside.png", ("beta", 2): "images/link.png"}
"""``(method, pair index): output_path`` pointing outside the run folder (absolute, ``..``, a symlink out)."""


def _value(metric: str, method: str, i: int) -> float | None:
    """The stored value: ``broken`` never has one, ``score_up`` fails on every third pair of ``alpha``; ``dist_down``
    is negative (a number, not a formula, in CSV)."""
    if metric == "broken" or (metric == "score_up" and method == "alpha" and i % 3 == 0):
        return None
    return (0.1 * (i + 1) + (0.05 if method == "beta" else 0.0)) * (-1 if metric == "dist_down" else 1)


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def _write_store(run: Path) -> list[tuple[str, str, int, float | None]]:
    """A run of two methods on one pair per (split, level); returns ``(metric, method, pair index, value)``."""
    _png(run.parent / "outside.png", 99)
    (run / "images").mkdir(parents=True)
    (run / "images" / "link.png").symlink_to(run.parent / "outside.png")
    written = []
    with Store(run) as st:
        run_id = st.begin_run("made-up", {"protocol": "made-up", "seeds": [0]}, {})
        for metric, (hib, group) in METRICS.items():
            st.register_metric(MetricInfo(metric, hib, (-1.0, 1.0), group, frozenset({"content"})))
        infos = {m: MethodInfo(m, "1") for m in METHODS}
        for info in infos.values():
            st.register_method(info)
        pairs = [(split, level) for split in SPLITS for level in LEVELS]
        for i, (split, level) in enumerate(pairs):
            content = FORMULA_ID if i == 0 else f"c{i}"
            pair = f"{content}__s{i}"
            for m in METHODS:
                key = f"{m}-{i}"
                out = CRAFTED.get((m, i), f"images/{m}/{key}.png")
                if (m, i) not in CRAFTED:
                    _png(run / out, i)
                st.write_sample(
                    SampleRecord(sample_key=key, run_id=run_id, method=m, method_config=infos[m].config_hash,
                                 protocol="made-up", protocol_version="1", pair_id=pair, content_id=content,
                                 style_id=f"s{i}", seed=0, split=split, level=level, family=FAMILY, status="ok",
                                 error=None, output_path=out, latency_s=0.01, batch_size=1, peak_memory_bytes=1,
                                 memory_kind="cpu_rss", device="cpu"),
                    [MetricValue(key, metric, _value(metric, m, i), hib, group, "1", None)
                     for metric, (hib, group) in METRICS.items()])
                written += [(metric, m, i, _value(metric, m, i)) for metric in METRICS]
        st.finish_run(run_id)
    return written


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """``(run folder, html, values written, figures drawn: {file: {"ticks", "legend", "math"}}, folders listed,
    warnings logged, the levels the per-level figure was given)``."""
    run = tmp_path_factory.mktemp("safety") / "run"
    written = _write_store(run)
    figures: dict[str, dict] = {}
    listed: list[Path] = []
    level_args: list[list[str]] = []
    save, file_names, level_stats = report._save, report._file_names, report._level_stats

    def spy_save(fig, path, dpi):
        fig.canvas.draw()  # tick labels are made at draw time
        texts = fig.findobj(lambda a: hasattr(a, "get_parse_math"))
        legends = [lg for ax in fig.axes for lg in [ax.get_legend()] if lg] + list(fig.legends)
        figures[Path(path).name] = {"ticks": [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()],
                                    "legend": [t.get_text() for lg in legends for t in lg.get_texts()],
                                    "math": [t.get_text() for t in texts if t.get_parse_math() and "$" in t.get_text()]}
        save(fig, path, dpi)

    def spy_file_names(folder):
        listed.append(Path(folder))
        return file_names(folder)

    def spy_level_stats(values, levels, *args, **kw):
        level_args.append(list(levels))
        return level_stats(values, levels, *args, **kw)

    logger = logging.getLogger("sxbench.report")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(report, "_save", spy_save)
            mp.setattr(report, "_file_names", spy_file_names)
            mp.setattr(report, "_level_stats", spy_level_stats)
            render(run)
    finally:
        logger.removeHandler(handler)
    html = (run / "index.html").read_text(encoding="utf-8")
    return run, html, written, figures, listed, [r.getMessage() for r in records], level_args


def test_report_is_written_with_mathtext_in_user_strings(rendered):
    run, html, _, figures, *_ = rendered
    assert (run / "index.html").is_file()
    assert {"metrics_by_level.png", "tradeoff.png"} <= set(figures)
    for name in ("metrics_by_level.png", "tradeoff.png"):
        assert (run / "figures" / name).is_file()
        assert figures[name]["math"] == [], name  # no text with a "$" is parsed as mathtext
    # the splits reach the trade-off legend as written (a leading space keeps "_held out" in it)
    assert set(SPLITS) <= {t.strip() for t in figures["tradeoff.png"]["legend"]}
    assert r"$\foo$" in html  # the grid labels, escaped text
    # and the columns of the split table
    (head,) = re.findall(r"<h2>Seen vs unseen styles</h2>.*?<thead>(.*?)</thead>", html, re.S)[:1]
    assert '<span class="muted">$\\foo$</span>' in head and '<span class="muted">_held out</span>' in head


def test_html_escapes_user_strings(rendered):
    _, html, *_ = rendered
    assert "<i>fam</i>" not in html
    assert "&lt;i&gt;fam&lt;/i&gt; $x$_y" in html


def test_custom_levels_are_shown_after_the_known_ones(rendered):
    _, html, _, figures, _, _, level_args = rendered
    want = ["color", "texture", "ink wash"]
    assert level_args == [want]  # the numbers behind the per-level figure
    assert figures["metrics_by_level.png"]["ticks"][:3] == want  # its x labels
    assert report._known_first(["zz", "none", "ink wash", "color", None], report.LEVEL_ORDER) == \
        ["color", "none", "ink wash", "zz"]
    # and a column of the per-level table
    assert "<th>ink wash</th>" in html
    assert html.index("<th>texture</th>") < html.index("<th>ink wash</th>")


def test_stored_paths_outside_the_run_folder_are_never_read(rendered):
    run, html, _, _, listed, warnings, _ = rendered
    root = run.resolve()
    assert listed and all(p.resolve() == root or root in p.resolve().parents for p in listed), listed
    for path in CRAFTED.values():
        assert f'src="{path}"' not in html
    assert 'src="images/alpha/alpha-0.png"' in html  # the contained ones are shown
    refusals = [w for w in warnings if "outside the run folder" in w]
    assert len(refusals) == 1 and refusals[0].startswith(f"report: {len(CRAFTED)} stored output path(s)"), warnings


def test_null_values_count_in_no_mean_and_no_n(rendered):
    run, html, written, *_ = rendered
    with Store(run) as st:
        values = st.values()
    assert values[values.metric == "broken"].value.isna().all()
    board = leaderboard(values)
    for metric in METRICS:
        for method in METHODS:
            finite = [v for m, me, _, v in written if m == metric and me == method and v is not None]
            cell = board[metric]["all"][method]
            assert cell.n == len(finite), (metric, method)
            if finite:
                assert cell.mean == pytest.approx(np.mean(finite), abs=1e-12)
            else:
                assert math.isnan(cell.mean) and cell.rank is None and cell.text == "–"
    assert board["score_up"]["all"]["alpha"].n < board["score_up"]["all"]["beta"].n  # some alpha values are NULL
    # the page shows those means; the all-NULL metric is a row of dashes, not an error
    want = np.mean([v for m, me, _, v in written if m == "score_up" and me == "alpha" and v is not None])
    cells = {g: re.search(r"<h3>" + g + r"</h3>.*?<tr data-method=\"alpha\"><td>.*?</td>\s*<td[^>]*data-v=\"([^\"]*)\">([^<]*)<", html,
                          re.S).groups() for g in ("fidelity", "style")}  # the first column: score_up, broken
    assert float(cells["fidelity"][0]) == pytest.approx(want, abs=1e-12)
    assert cells["style"] == ("nan", "–")


def test_a_store_whose_values_are_all_null_reports_and_exports(tmp_path):
    """Every metric failed on every sample: SQLite hands back a column of None, not of numbers."""
    run = tmp_path / "run"
    with Store(run) as st:
        run_id = st.begin_run("made-up", {"protocol": "made-up"}, {})
        for metric, (hib, group) in METRICS.items():
            st.register_metric(MetricInfo(metric, hib, (-1.0, 1.0), group, frozenset({"content"})))
        info = MethodInfo("alpha", "1")
        st.register_method(info)
        for i, level in enumerate(LEVELS):
            st.write_sample(
                SampleRecord(sample_key=f"k{i}", run_id=run_id, method="alpha", method_config=info.config_hash,
                             protocol="made-up", protocol_version="1", pair_id=f"p{i}", content_id="c", style_id="s",
                             seed=0, split="seen", level=level, family="f", status="ok", error=None, output_path=None,
                             latency_s=0.01, batch_size=1, peak_memory_bytes=1, memory_kind="cpu_rss", device="cpu"),
                [MetricValue(f"k{i}", metric, None, hib, group, "1", None) for metric, (hib, group) in METRICS.items()])
        st.finish_run(run_id)
    html = render(run).read_text(encoding="utf-8")
    assert "<th>ink wash</th>" in html and (run / "figures" / "metrics_by_level.png").is_file()
    assert not (run / "figures" / "tradeoff.png").exists()  # nothing to plot
    df = pd.read_parquet(export(run, "parquet"))
    assert len(df) == len(METRICS) * len(LEVELS) and df.value.dtype == float and df.value.isna().all()


def test_csv_export_neutralises_formulas_and_parquet_keeps_them(rendered, tmp_path):
    run, *_ = rendered
    with open(export(run, "csv", tmp_path / "r.csv"), newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    first = [r for r in rows if r["content_id"].endswith(FORMULA_ID)]
    assert first and all(r["content_id"] == "'" + FORMULA_ID for r in first)
    assert all(r["pair_id"] == f"'{FORMULA_ID}__s0" for r in first)
    assert not any(v[:1] in report.FORMULA_PREFIXES for r in rows for k, v in r.items() if k != "value"), \
        "a text cell a spreadsheet would run"
    negatives = [r["value"] for r in rows if r["metric"] == "dist_down"]
    assert negatives and all(float(v) < 0 and v.startswith("-") for v in negatives)  # numbers stay numbers
    assert all(r["value"] == "" for r in rows if r["metric"] == "broken")

    df = pd.read_parquet(export(run, "parquet", tmp_path / "r.parquet"))
    assert (df.content_id == FORMULA_ID).sum() == len(first)  # exact values
    assert df[df.metric == "dist_down"].value.lt(0).all()
    assert df[df.metric == "broken"].value.isna().all()


def test_cli_run_report_and_export_with_user_strings(tmp_path, capsys):
    """The real path: a folder protocol whose manifest has a mathtext split, a custom level and a formula id."""
    from sxbench.cli import main

    data, out = tmp_path / "data", tmp_path / "out"
    names = ("c0", FORMULA_ID, "s0", "s1")
    for i, name in enumerate(names):
        _png(data / f"{name}.png", i)
    rows = [("c0.png", "s0.png", "seen", "color"), (f"{FORMULA_ID}.png", "s1.png", r"$\foo$", "ink wash"),
            ("c0.png", "s1.png", r"$\foo$", "texture")]
    with open(data / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["content", "style", "split", "level", "family"])
        w.writerows(r + (FAMILY,) for r in rows)
    assert main(["run", "--protocol", str(data / "manifest.csv"), "--methods", "identity,reinhard", "--metrics",
                 "content_ssim,style_color_swd", "--out", str(out), "--no-progress", "--resolution", "32"]) == 0
    assert main(["report", str(out)]) == 0
    html = (out / "index.html").read_text(encoding="utf-8")
    assert r"$\foo$" in html and "<th>ink wash</th>" in html and "&lt;i&gt;fam&lt;/i&gt;" in html
    assert (out / "figures" / "metrics_by_level.png").is_file() and (out / "figures" / "tradeoff.png").is_file()
    assert main(["export", str(out), "--format", "csv"]) == 0
    df = pd.read_csv(out / "results.csv")
    assert set(df[df.content_id.str.contains("cmd", regex=False)].content_id) == {"'" + FORMULA_ID + ".png"}
    capsys.readouterr()


def test_failed_values_are_counted_per_method_and_metric(rendered):
    """The page says how many values each mean leaves out (a judge's unparseable answers are stored this way)."""
    _, html, written, *_ = rendered
    text = html[html.index("<h2>Failed metric values</h2>"):]
    for method in METHODS:
        for metric in METRICS:
            rows = [v for m, me, _, v in written if m == metric and me == method]
            failed = sum(v is None for v in rows)
            row = re.search(rf"<tr><td>{method}</td><td>{metric}</td><td[^>]*>(\d+)</td><td>(\d+)</td></tr>", text)
            if failed:
                assert row and row.groups() == (str(failed), str(len(rows))), (method, metric)
            else:
                assert row is None, (method, metric)


def test_trade_off_axes_take_each_metrics_direction(monkeypatch, tmp_path):
    """The fidelity axis of the trade-off figure says 'lower is better' for a lower-is-better metric."""
    import matplotlib.axes

    from sxbench import report

    labels: list[str] = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylabel", lambda self, text, *a, **k: labels.append(text))
    rows = [{"method": m, "split": "seen", "level": "color", "metric": metric, "value": v, "higher_is_better": hib,
             "metric_group": group}
            for m, v in (("a", 0.2), ("b", 0.4)) for metric, hib, group in (("dist", False, "fidelity"),
                                                                         ("sim", True, "style"))]
    report._figures(pd.DataFrame(rows), tmp_path)
    assert "dist (lower is better)" in labels


def test_the_report_names_no_folder_of_the_machine(tmp_path, monkeypatch):
    """A run folder inside the home folder, a method whose checkpoint lies in the home folder and one in the
    installed package: neither the run folder's, the home folder's nor the virtual environment's absolute path (the
    provenance's command line) is anywhere in the page or its data files (they read ``.``, ``~`` and
    ``$VIRTUAL_ENV``), and the packaged checkpoint reads relative to its import root."""
    import sys

    from sxbench.cli import main

    home = tmp_path / "home"
    run = home / "runs" / "r1"
    monkeypatch.setenv("HOME", str(home))
    assert main(["run", "--protocol", "synth-smoke", "--methods", "identity,reinhard", "--metrics",
                 "content_ssim", "--no-progress", "--out", str(run)]) == 0
    packaged = Path(report.__file__).resolve().parents[2] / "styleexpert" / "checkpoints" / "styleexpert"
    with Store(run) as st:
        st.register_method(MethodInfo("mine", "1", provenance={"checkpoint": str(home / "ckpt" / "mine")}))
        st.register_method(MethodInfo("packaged", "1", provenance={"checkpoint": str(packaged)}))
    render(run)
    files = [run / "index.html", *sorted((run / "data").glob("*.js"))]
    assert len(files) > 2
    for f in files:
        text = f.read_text()
        venv = {sys.prefix} if sys.prefix != sys.base_prefix else set()
        for machine in {str(run), str(run.resolve()), str(home), str(home.resolve()), *venv}:
            assert machine not in text, f"{f.name} names {machine}"
    html = (run / "index.html").read_text()
    assert "checkpoint: ~/ckpt/mine" in html and "checkpoint: styleexpert/checkpoints/styleexpert" in html
