"""Scaling out (``sxbench.distributed``, ``sxbench.merge``): ``torchrun`` with two CPU processes (gloo), three
``--shard`` jobs merged, and a rank killed with SIGKILL then resumed all give the export a single process gives, row
for row and value for value; ``sxbench merge`` refuses folders that disagree and keeps a sample stored twice once;
``sxbench score`` adds a metric without generating anything."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sxbench.cli import main

BASE = ["--protocol", "synth-smoke", "--metrics", "content_ssim,style_color_swd,fid", "--no-progress"]
"""Weight-free image metrics and FID (a tiny Inception: set metrics are computed at the merge)."""
METHODS = ["--methods", "identity,reinhard,histmatch"]
NUMBERS = ["value", "ci_low", "ci_high", "std"]


def _export(run_dir: Path) -> pd.DataFrame:
    from sxbench.report import export

    df = pd.read_csv(export(run_dir, "csv", run_dir.parent / f"{run_dir.name}.csv"))
    labels = [c for c in df.columns if c not in NUMBERS]
    return df.sort_values(labels).reset_index(drop=True)


def _assert_same_export(a: Path, b: Path) -> None:
    ea, eb = _export(a), _export(b)
    assert len(ea) == len(eb) > 0
    pd.testing.assert_frame_equal(ea, eb, check_exact=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> list[str]:
    from conftest import write_tiny_inception

    return [*BASE, "--weights-dir", str(write_tiny_inception(tmp_path_factory.mktemp("weights"), channels=16, stride=8))]


@pytest.fixture(scope="module")
def single(tmp_path_factory, base) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(["run", *base, *METHODS, "--out", str(out)]) == 0
    return out


def _torchrun(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", "2", "-m", "sxbench", "run", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_torchrun_with_two_processes_stores_what_one_process_stores(single, base, tmp_path):
    out = tmp_path / "run"
    proc = _torchrun([*base, *METHODS, "--out", str(out)])
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    _assert_same_export(single, out)
    assert not (out / "shards").exists()  # merged, then removed
    with sqlite3.connect(out / "results.sqlite") as c:
        shards = {json.loads(cfg).get("shard", [None])[0] for (cfg,) in c.execute("SELECT config FROM runs")}
    assert shards >= {0, 1}  # both ranks ran


def test_three_shards_merged_store_what_one_process_stores(single, base, tmp_path, capsys):
    folders = [tmp_path / f"shard{i}" for i in range(3)]
    for i, f in enumerate(folders):
        assert main(["run", *base, *METHODS, "--shard", f"{i}/3", "--out", str(f)]) == 0
        with sqlite3.connect(f / "results.sqlite") as c:
            assert c.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 8  # 24 samples over 3 jobs
            assert c.execute("SELECT COUNT(*) FROM set_values").fetchone()[0] == 0  # sets: at the merge
    assert main(["merge", *map(str, folders), "--out", str(tmp_path / "merged"), "--no-progress", *base[-2:]]) == 0
    assert "24 samples added, 0 stored twice" in capsys.readouterr().out
    _assert_same_export(single, tmp_path / "merged")

    # merging again into the merged folder: every sample is there already, nothing changes
    assert main(["merge", str(folders[0]), "--out", str(tmp_path / "merged"), "--no-progress", *base[-2:]]) == 0
    assert "0 samples added, 8 stored twice and kept once" in capsys.readouterr().out
    _assert_same_export(single, tmp_path / "merged")


def test_merge_refuses_folders_that_disagree_on_one_line(single, base, tmp_path, capsys):
    other = tmp_path / "small"
    assert main(["run", *base, "--methods", "identity", "--resolution", "32", "--out", str(other)]) == 0
    capsys.readouterr()
    assert main(["merge", str(single), str(other), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "resolution=64 vs 32" in err and str(single) in err and str(other) in err
    params = tmp_path / "strength"
    assert main(["run", *base, "--methods", "reinhard", "--param", "reinhard.strength=0.5", "--out", str(params)]) == 0
    capsys.readouterr()
    assert main(["merge", str(single), str(params), "--out", str(tmp_path / "m2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "reinhard" in err and "strength=1.0 vs 0.5" in err
    assert not (tmp_path / "m" / "results.sqlite").exists() and not (tmp_path / "m2" / "results.sqlite").exists()
    # a folder that ran reinhard both ways (its history) shares a configuration with `single`: merged
    assert main(["run", *base, "--methods", "reinhard", "--out", str(params)]) == 0
    assert main(["merge", str(single), "--out", str(params), "--no-progress", *base[-2:]]) == 0
    assert "16 samples added, 8 stored twice" in capsys.readouterr().out


def test_merge_keeps_a_sample_stored_twice_once_and_an_output_over_an_error(single, base, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(single, copy)
    with sqlite3.connect(copy / "results.sqlite") as c:  # one sample failed in this copy
        key, rel = c.execute("SELECT sample_key, output_path FROM samples ORDER BY sample_key LIMIT 1").fetchone()
        c.execute("UPDATE samples SET status = 'error', error = 'boom', output_path = NULL WHERE sample_key = ?", (key,))
        c.execute("DELETE FROM metric_values WHERE sample_key = ?", (key,))
    (copy / rel).unlink()
    out = tmp_path / "merged"
    assert main(["merge", str(copy), str(single), "--out", str(out), "--no-progress", *base[-2:]]) == 0
    assert "24 samples added, 23 stored twice and kept once, 1 error rows replaced by outputs" in capsys.readouterr().out
    with sqlite3.connect(out / "results.sqlite") as c:
        assert c.execute("SELECT COUNT(*), COUNT(DISTINCT sample_key) FROM samples").fetchone() == (24, 24)
        assert c.execute("SELECT status FROM samples WHERE sample_key = ?", (key,)).fetchone() == ("ok",)
    assert (out / rel).is_file()
    _assert_same_export(single, out)


def test_a_rank_killed_mid_run_resumes_with_no_duplicate_and_no_missing_row(base, tmp_path):
    """``kill -9`` on rank 1 after its first committed sample (torchrun then stops rank 0); the same command
    completes the run; the store equals the single-process one (``sleep`` outputs the content, as ``identity``)."""
    args = [*base, "--methods", "sleep,reinhard", "--param", "sleep.seconds=0.4", "--batch-size", "1"]
    out = tmp_path / "run"
    proc = _torchrun([*args, "--out", str(out)])
    db = out / "shards" / "rank1-of-2" / "results.sqlite"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
                if c.execute("SELECT COUNT(*) FROM samples").fetchone()[0] >= 1:
                    break
        except sqlite3.Error:
            pass
        time.sleep(0.05)
    os.kill(json.loads((db.parent / ".lock").read_text())["pid"], signal.SIGKILL)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, log[-2000:]
    assert not (out / "results.sqlite").exists() or sqlite3.connect(out / "results.sqlite").execute(
        "SELECT COUNT(*) FROM samples").fetchone()[0] < 16  # it did stop before the end
    again = _torchrun([*args, "--out", str(out)])
    log, _ = again.communicate(timeout=600)
    assert again.returncode == 0, log[-3000:]
    with sqlite3.connect(out / "results.sqlite") as c:
        rows = c.execute("SELECT method, pair_id, seed FROM samples").fetchall()
    assert len(rows) == len(set(rows)) == 16  # 8 pairs × 2 methods: none twice, none missing
    reference = tmp_path / "reference"
    assert main(["run", *args, "--out", str(reference)]) == 0
    _assert_same_export(reference, out)


def test_score_adds_a_metric_without_generating(single, base, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(single, run)
    pngs = {p: p.stat().st_mtime_ns for p in (run / "images").rglob("*.png")}
    before = pd.read_sql_query("SELECT * FROM samples", sqlite3.connect(run / "results.sqlite"))
    assert main(["score", str(run), "--metrics", "style_gram", "--no-progress", *base[-2:]]) == 0
    assert "24 stored samples scored; nothing generated" in capsys.readouterr().out
    after = pd.read_sql_query("SELECT * FROM samples", sqlite3.connect(run / "results.sqlite"))
    pd.testing.assert_frame_equal(before, after)
    assert {p: p.stat().st_mtime_ns for p in (run / "images").rglob("*.png")} == pngs
    values = _export(run)
    assert (values.metric == "style_gram").sum() == 24 and values[values.metric == "style_gram"].value.notna().all()
    old = _export(single)
    pd.testing.assert_frame_equal(values[values.metric != "style_gram"].reset_index(drop=True), old)
    assert main(["score", str(run), "--no-progress", *base[-2:]]) == 0  # nothing left to do
    assert "0 stored samples scored" in capsys.readouterr().out


def test_shard_and_torchrun_arguments_are_checked(base, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit):
        main(["run", *base, "--shard", "3/3", "--out", str(tmp_path / "x")])
    assert "0 <= I < N" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["run", *base, "--shard", "0/2", "--out", str(tmp_path / "y")]) == 2
    assert "drop --shard" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "nothing"), "--out", str(tmp_path / "z")]) == 2
    assert "not a run folder" in capsys.readouterr().err
