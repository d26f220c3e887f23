"""The command line end to end, as a user runs it (subprocesses)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from sxbench import registry
from sxbench.cli import main
from sxbench.runner import KILL_AFTER_SAMPLES_ENV, RunConfig, Runner
from sxbench.store import Store

SXBENCH = [sys.executable, "-m", "sxbench.cli"]


def sx(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([*SXBENCH, *args], capture_output=True, text=True, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"sxbench {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def sx_here(capsys, *args: str) -> tuple[int, str, str]:
    """The same command in this process (``sxbench.cli.main``): one interpreter start and torch import less.
    Returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_end_to_end_on_synth_smoke(tmp_path, capsys):
    from conftest import write_tiny_dinov2

    out = tmp_path / "smoke"
    # the routed StyleExpert methods need the style backbone (dinov2-s): random weights of the real class here;
    # the other backbones are absent, so their metrics are skipped
    wdir = str(write_tiny_dinov2(tmp_path / "weights", declare=True))
    p = sx("run", "--protocol", "synth-smoke", "--out", str(out), "--no-progress", "--weights-dir", wdir)
    assert "56 generated, 0 already stored, 0 failed" in p.stdout  # 7 default methods × 8 pairs
    html = (out / "index.html").read_text()
    for name in ("identity", "stylecopy", "reinhard", "histmatch", "styleexpert", "styleexpert-lora",
                 "styleexpert-noprior", "content_ssim", "style_gram", "target_detail", "Expert utilization",
                 "routing_iou_similar", "weights_sha256", "sxbench train all"):
        assert name in html
    for fig in ("metrics_by_level", "expert_usage", "routing_iou", "training_loss"):
        assert (out / "figures" / f"{fig}.png").is_file(), fig
    assert "unseen" in html and "texture" in html
    _check_header_arrows(html)
    for src in __import__("re").findall(r'src="([^"]+\.png)"', html):
        assert (out / src).is_file(), src
    # same command again: nothing recomputed (the first run was a user's subprocess; the rest run in-process)
    code, stdout, _ = sx_here(capsys, "run", "--protocol", "synth-smoke", "--out", str(out), "--no-progress",
                              "--weights-dir", wdir)
    assert code == 0 and "0 generated, 56 already stored" in stdout
    # export in long format
    assert sx_here(capsys, "export", str(out))[0] == 0
    df = pd.read_csv(out / "results.csv")
    assert {"method", "protocol", "split", "level", "content_id", "style_id", "seed", "metric", "value",
            "higher_is_better"} <= set(df.columns)
    per_image = df[df.scope == "sample"]
    metrics = per_image.metric.nunique()  # the weight-free ones and dino_content (dinov2-s)
    assert "dino_content" in set(per_image.metric) and metrics >= 9
    assert len(per_image) == 7 * 8 * metrics and not per_image.duplicated(["method", "pair_id", "seed", "metric"]).any()
    assert sx_here(capsys, "export", str(out), "--format", "parquet", "--output", str(tmp_path / "r.parquet"))[0] == 0
    assert len(pd.read_parquet(tmp_path / "r.parquet")) == len(df)
    (out / "index.html").unlink()
    assert sx_here(capsys, "report", str(out))[0] == 0
    assert (out / "index.html").is_file()


KNOWN_DIRECTION = {
    # what each statistic measures says which way is better: similarities and scores ↑, distances ↓
    "content_ssim": "↑", "content_edge_f1": "↑", "dino_content": "↑", "dino_structure": "↓", "target_psnr": "↑", "target_ssim": "↑",
    "style_color_swd": "↓", "style_gram": "↓", "target_detail": "↓", "target_color_swd": "↓",
    # expert utilization: even load, no dead experts, family-aware routing (similar styles share experts)
    "expert_load_entropy": "↑", "expert_dead_fraction": "↓", "expert_load_cv": "↓", "expert_family_mi": "↑",
    "routing_iou_similar": "↑", "routing_iou_related": "↑", "routing_iou_dissimilar": "↓",
}


def _check_header_arrows(html: str) -> None:
    """Every column header naming a metric carries that metric's arrow: the registry's ``higher_is_better`` and the
    known direction above agree with it, in the leaderboard, split, level and expert tables alike."""
    from test_report import header_direction, html_tables

    from sxbench.metrics.experts import DIRECTIONS

    sections: dict[str, set[str]] = {}
    for t in html_tables(html):
        for th in t["head"]:
            words = th["text"].split()
            if not words or words[0] not in KNOWN_DIRECTION:
                continue
            metric, arrow = header_direction(th)
            hib = DIRECTIONS[metric] if metric in DIRECTIONS else registry.metrics.get(metric).info.higher_is_better
            assert arrow == ("↑" if hib else "↓") == KNOWN_DIRECTION[metric], (t["h2"], th["text"])
            sections.setdefault(metric, set()).add(t["h2"])
        if t["h3"] == "Metrics":  # provenance: one row per metric, its direction in words and arrow
            for row in t["rows"]:
                name, direction = row[0]["text"], row[2]["text"]
                assert direction == {"↑": "higher ↑", "↓": "lower ↓"}[KNOWN_DIRECTION[name]], name
                sections.setdefault(name, set()).add("Provenance")
    per_sample = {"Leaderboard", "Seen vs unseen styles", "Per style level", "Provenance"}
    assert {m for m, where in sections.items() if where == per_sample} == {
        m for m in KNOWN_DIRECTION if m not in DIRECTIONS}, sections
    assert all(sections[m] == {"Expert utilization"} for m in DIRECTIONS), sections


def test_list_and_helpful_errors(tmp_path, capsys):
    assert "content_ssim" in sx("list", "metrics").stdout
    assert "synth-smoke" in sx_here(capsys, "list", "protocols")[1]
    # as a user sees it: exit 2 and one line, no traceback
    p = sx("run", "--methods", "reinhart", "--protocol", "synth-smoke", "--out", str(tmp_path), check=False)
    assert p.returncode == 2 and "Did you mean 'reinhard'" in p.stderr and "Traceback" not in p.stderr
    code, _, err = sx_here(capsys, "report", str(tmp_path / "nothing"))
    assert code == 2 and "sxbench run" in err


def test_folder_with_odd_files_one_error_line_rest_runs(tmp_path):
    from conftest import write_odd_images

    root = tmp_path / "mine"
    files = write_odd_images(root)
    out = tmp_path / "out"
    p = sx("run", "--protocol", str(root), "--methods", "identity,reinhard", "--out", str(out),
           "--resolution", "32", "--no-progress")
    error_lines = [ln for ln in p.stderr.splitlines() if ln.startswith("ERROR")]
    assert len(error_lines) == 1 and str(files["corrupt"]) in error_lines[0]
    assert "16 generated, 0 already stored, 0 failed" in p.stdout  # 4 usable contents × 2 styles × 2 methods
    assert "corrupt.png" in (out / "index.html").read_text()


def test_kill_9_then_rerun_completes_without_duplicates_or_losses(tmp_path, capsys):
    """A real SIGKILL at an exact point: the runner's test hook kills the process right after the 10th sample's
    transaction commits (mid-method and mid-batch: identity's 8, then 2 of reinhard's first batch of 3)."""
    out, kill_after = tmp_path / "killed", 10
    methods, metrics = ("identity", "reinhard", "histmatch"), ("content_ssim", "target_ssim")
    pairs = [p.pair_id for p in registry.create_protocol("synth-smoke").spec.pairs]
    args = ["run", "--protocol", "synth-smoke", "--methods", ",".join(methods), "--metrics", ",".join(metrics),
            "--out", str(out), "--batch-size", "3", "--no-progress"]
    killed = subprocess.run([*SXBENCH, *args], capture_output=True, text=True,
                            env=os.environ | {KILL_AFTER_SAMPLES_ENV: str(kill_after)})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert "generated" not in killed.stdout and not (out / "index.html").exists()  # it died before the summary
    with sqlite3.connect(out / "results.sqlite") as c:
        stored = c.execute("SELECT method, pair_id FROM samples").fetchall()
        nvals = c.execute("SELECT COUNT(*) FROM metric_values").fetchone()[0]
        status = c.execute("SELECT status FROM runs").fetchall()
    # exactly the committed samples, in work order: all of identity's, reinhard's first two pairs
    assert sorted(stored) == sorted([("identity", p) for p in pairs] + [("reinhard", p) for p in pairs[:2]])
    assert nvals == kill_after * len(metrics) and status == [("running",)]

    code, summary, _ = sx_here(capsys, *args)  # the same command again, in-process: only the rest runs
    assert code == 0
    assert f"{3 * 8 - kill_after} generated, {kill_after} already stored, 0 failed, 0 rescored" in summary

    with sqlite3.connect(out / "results.sqlite") as c:
        rows = c.execute("SELECT method, pair_id, seed, status, output_path FROM samples").fetchall()
        vals = pd.read_sql_query("SELECT s.method, s.pair_id, v.metric, v.value FROM metric_values v "
                                 "JOIN samples s USING (sample_key)", c)
    assert sorted(r[:4] for r in rows) == sorted((m, p, 0, "ok") for m in methods for p in pairs)
    assert all((out / r[4]).is_file() for r in rows) and not list(out.rglob("*.tmp.png"))
    assert len(vals) == len(methods) * len(pairs) * len(metrics) and vals.value.notna().all()
    # nothing lost or altered by the kill: the values equal an uninterrupted run's
    Runner(RunConfig("synth-smoke", methods=methods, metrics=metrics, out=tmp_path / "ref", progress=False)).run()
    with Store(tmp_path / "ref") as st:
        ref = st.values()
    got, want = (d.set_index(["method", "pair_id", "metric"]).value.sort_index() for d in (vals, ref))
    assert got.index.equals(want.index)
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=0, atol=1e-9)
