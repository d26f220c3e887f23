"""The command line end to end, as a user runs it (subprocesses)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

SXBENCH = [sys.executable, "-m", "sxbench.cli"]


def sx(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([*SXBENCH, *args], capture_output=True, text=True, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"sxbench {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def test_end_to_end_on_synth_smoke(tmp_path):
    out = tmp_path / "smoke"
    p = sx("run", "--protocol", "synth-smoke", "--out", str(out), "--no-progress")
    assert "56 generated, 0 already stored, 0 failed" in p.stdout  # 7 default methods × 8 pairs
    html = (out / "index.html").read_text()
    for name in ("identity", "stylecopy", "reinhard", "histmatch", "styleexpert", "styleexpert-lora",
                 "styleexpert-noprior", "content_ssim", "style_gram", "target_detail", "Expert utilization",
                 "routing_iou_similar", "weights_sha256", "sxbench train all"):
        assert name in html
    for fig in ("metrics_by_level", "expert_usage", "routing_iou", "training_loss"):
        assert (out / "figures" / f"{fig}.png").is_file(), fig
    assert "↑" in html and "↓" in html and "unseen" in html and "texture" in html
    for src in __import__("re").findall(r'src="([^"]+\.png)"', html):
        assert (out / src).is_file(), src
    # same command again: nothing recomputed
    again = sx("run", "--protocol", "synth-smoke", "--out", str(out), "--no-progress")
    assert "0 generated, 56 already stored" in again.stdout
    # export in long format
    sx("export", str(out))
    df = pd.read_csv(out / "results.csv")
    assert {"method", "protocol", "split", "level", "content_id", "style_id", "seed", "metric", "value",
            "higher_is_better"} <= set(df.columns)
    assert len(df) == 7 * 8 * 8 and not df.duplicated(["method", "pair_id", "seed", "metric"]).any()
    sx("export", str(out), "--format", "parquet", "--output", str(tmp_path / "r.parquet"))
    assert len(pd.read_parquet(tmp_path / "r.parquet")) == len(df)
    (out / "index.html").unlink()
    sx("report", str(out))
    assert (out / "index.html").is_file()


def test_list_and_helpful_errors(tmp_path):
    assert "content_ssim" in sx("list", "metrics").stdout
    assert "synth-smoke" in sx("list", "protocols").stdout
    p = sx("run", "--methods", "reinhart", "--protocol", "synth-smoke", "--out", str(tmp_path), check=False)
    assert p.returncode == 2 and "Did you mean 'reinhard'" in p.stderr
    p = sx("report", str(tmp_path / "nothing"), check=False)
    assert p.returncode == 2 and "sxbench run" in p.stderr


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


def _count_rows(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return c.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_kill_9_then_rerun_completes_without_duplicates_or_losses(tmp_path):
    out = tmp_path / "killed"
    args = ["run", "--protocol", "synth", "--limit", "48", "--methods", "identity,reinhard,histmatch",
            "--metrics", "content_ssim,target_ssim", "--out", str(out), "--batch-size", "4", "--no-progress"]
    proc = subprocess.Popen([*SXBENCH, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while _count_rows(out / "results.sqlite") < 40 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; raise --limit"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _count_rows(out / "results.sqlite")
    assert 0 < partial < 3 * 48
    p = sx(*args)
    assert f"{partial} already stored" in p.stdout
    with sqlite3.connect(out / "results.sqlite") as c:
        rows = c.execute("SELECT method, pair_id, seed, status FROM samples").fetchall()
        nvals = c.execute("SELECT COUNT(*) FROM metric_values").fetchone()[0]
    assert len(rows) == len(set(r[:3] for r in rows)) == 3 * 48
    assert all(r[3] == "ok" for r in rows)
    assert nvals == 3 * 48 * 2
