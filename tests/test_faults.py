"""Fault injection (issue 16): kill -9, Ctrl-C, concurrent runs, damaged and crafted stores, changed setups, old and
newer schemas, bad method outputs and metric values, a wrong ``--out``.

Where a fault only exists between processes (a signal, the run-folder lock) each run is a real process: Ctrl-C goes
to ``python -m sxbench`` as a user starts it; the ten kills and the three concurrent runs are children of a fork
server (``ZYGOTE``) that runs the same ``sxbench.cli.main`` without paying an interpreter start and torch import
per child (10 s of CPU each here, which would make this module take five minutes instead of two). Everything else
runs in this process through ``sxbench.cli.main``. Every run is ``synth-smoke`` (8 pairs at 64²) with ``identity``
and ``reinhard`` and weight-free metrics, and results are compared through ``sxbench export``: the rows and values
of an uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout, suppress
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sxbench import registry
from sxbench.cli import main
from sxbench.interfaces import ImageMetric, Method
from sxbench.lock import LOCK_NAME
from sxbench.records import MetricInfo, stable_hash
from sxbench.runner import KILL_AFTER_SAMPLES_ENV, PAUSE_AFTER_SAMPLES_ENV, RunConfig, Runner
from sxbench.store import DB_NAME, SCHEMA_VERSION, Store

SX = [sys.executable, "-m", "sxbench"]
METHODS = ("identity", "reinhard")
METRICS = ("content_ssim", "style_color_swd")
SMOKE = ["--protocol", "synth-smoke", "--methods", ",".join(METHODS), "--metrics", ",".join(METRICS),
         "--batch-size", "3", "--no-progress"]
"""The run every test repeats: 16 samples (2 methods × 8 pairs), batches of 3 so kills land mid-batch too."""
TOTAL = 16
PROCESS_TIMEOUT = 300
"""Seconds a child process may take: interpreter start and torch import are slow on a loaded 2-core machine."""
INTERRUPTED = "sxbench: interrupted"
"""How the CLI's one line on Ctrl-C starts (it goes on to say the same command resumes)."""
SUMMARY = re.compile(r"(\d+) generated, (\d+) already stored, (\d+) failed, (\d+) rescored")


# ----------------------------------------------------------------------------------------------------- helpers
def sx_here(*args: str) -> tuple[int, str, str]:
    """``sxbench ARGS`` in this process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def printed_lines(stderr: str) -> list[str]:
    """What the CLI printed to stderr, without log records (in-process they go to pytest's handlers anyway)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(("DEBUG ", "INFO ", "WARNING "))]


def summary(stdout: str) -> tuple[int, int, int, int]:
    """(generated, already stored, failed, rescored) of a run's summary line."""
    m = SUMMARY.search(stdout)
    assert m, stdout
    return tuple(int(g) for g in m.groups())  # type: ignore[return-value]


def export_frame(run_dir: Path) -> pd.DataFrame:
    """``sxbench export RUN --format csv`` read back, one row per (sample_key, metric), sorted. The export holds no
    column that differs between identical runs (no run id, time or latency)."""
    path = run_dir.parent / f"{run_dir.name}-export.csv"
    code, _, err = sx_here("export", str(run_dir), "--format", "csv", "--output", str(path))
    assert code == 0, err
    df = pd.read_csv(path)
    assert not {"run_id", "created", "latency_s", "started"} & set(df.columns)
    return df.sort_values(["sample_key", "metric"], na_position="last").reset_index(drop=True)


def assert_same_results(got: pd.DataFrame, want: pd.DataFrame, ignore: tuple[str, ...] = ()) -> None:
    """No duplicate and no missing (sample_key, metric) row; every column equal, values to 1e-9."""
    key = ["sample_key", "metric"]
    assert not got.duplicated(key).any(), got[got.duplicated(key, keep=False)]
    missing = set(map(tuple, want[key].to_numpy())) - set(map(tuple, got[key].to_numpy()))
    extra = set(map(tuple, got[key].to_numpy())) - set(map(tuple, want[key].to_numpy()))
    assert not missing and not extra, (sorted(missing), sorted(extra))
    assert list(got.columns) == list(want.columns)
    cols = [c for c in want.columns if c not in ("value", *ignore)]
    pd.testing.assert_frame_equal(got[cols], want[cols], check_dtype=False)
    np.testing.assert_allclose(got.value.to_numpy(float), want.value.to_numpy(float), rtol=0, atol=1e-9)


def query(run_dir: Path, sql: str, *params) -> list[tuple]:
    """Rows of ``sql`` on the store, read as the user's sqlite3 would (never creates a database)."""
    c = sqlite3.connect(f"file:{run_dir / DB_NAME}?mode=rw", uri=True, timeout=30)
    try:
        with c:  # commits an UPDATE
            return c.execute(sql, params).fetchall()
    finally:
        c.close()


def stored_samples(run_dir: Path) -> int:
    """Committed samples; 0 while the store does not exist or has no tables yet (a run just starting)."""
    if not (run_dir / DB_NAME).is_file():
        return 0
    try:
        return query(run_dir, "SELECT COUNT(*) FROM samples")[0][0]
    except sqlite3.OperationalError:
        return 0


def start(args: list[str], logs: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m sxbench ARGS`` as a user starts it; stdout and stderr to ``logs.out`` and ``logs.err`` (files,
    never pipes: a killed child must not leave a reader waiting)."""
    with open(logs.with_suffix(".out"), "w") as so, open(logs.with_suffix(".err"), "w") as se:
        return subprocess.Popen([*SX, *args], stdout=so, stderr=se, env=env or os.environ.copy())


ZYGOTE = r"""
import importlib.util, json, os, sys, traceback
import sxbench.cli, sxbench.imported, sxbench.lock, sxbench.report, sxbench.runner, sxbench.store  # what `run` imports
print(json.dumps({"ready": os.getpid()}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "wait":
        _, status = os.waitpid(req["pid"], 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
        continue
    pid = os.fork()
    if pid:
        print(json.dumps({"pid": pid}), flush=True)
        continue
    code = 1
    try:  # the child: `python -m sxbench ARGV` from here on, minus the interpreter start and the imports
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = [importlib.util.find_spec("sxbench.__main__").origin, *req["argv"]]  # as `-m` sets it
        code = sxbench.cli.main(req["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
"""
"""A fork server: one interpreter imports sxbench once, then forks a child per run. Each child is a real process
(its own PID, file descriptors, SQLite connections, run-folder lock; killed by a real signal) running exactly what
``python -m sxbench ARGV`` runs, ``sxbench.cli.main(ARGV)``: only the interpreter start and the imports (about 10 s
of CPU each on a 2-core machine) are shared. It forks before any torch op has run (no intra-op thread pool exists
yet), and opens no database or lock itself."""


class Zygote:
    """Client of ``ZYGOTE``: ``start`` returns a ``ForkedRun``, a ``subprocess.Popen`` look-alike."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.children: list[ForkedRun] = []
        assert "ready" in self._reply(), "the fork server did not start"

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            pytest.fail(f"the fork server exited ({self.proc.poll()})")
        return json.loads(line)

    def ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def start(self, args: list[str], logs: Path, env: dict[str, str] | None = None) -> "ForkedRun":
        """Like ``start``: ``sxbench ARGS`` with stdout and stderr to ``logs.out`` and ``logs.err``."""
        pid = self.ask(op="start", argv=list(args), env=dict(env or os.environ), stdout=str(logs.with_suffix(".out")),
                       stderr=str(logs.with_suffix(".err")))["pid"]
        self.children.append(ForkedRun(self, pid))
        return self.children[-1]

    def close(self) -> None:
        for c in self.children:
            if c.returncode is None:
                c.kill()
                c.wait(timeout=60)
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


class ForkedRun:
    """A child of the fork server, with ``subprocess.Popen``'s ``pid``, ``poll``, ``wait``, ``kill`` and
    ``returncode`` (negative: killed by that signal)."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote, self.pid, self.returncode = zygote, pid, None

    def _running(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
        except FileNotFoundError:
            return False

    def poll(self) -> int | None:
        if self.returncode is None and not self._running():
            self.returncode = self.zygote.ask(op="wait", pid=self.pid)["rc"]
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"sxbench (PID {self.pid}) still running after {timeout} s")
            time.sleep(0.02)
        return self.returncode

    def kill(self) -> None:
        with suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


def wait_holding_lock(run_dir: Path, p: subprocess.Popen | ForkedRun, timeout: float = PROCESS_TIMEOUT) -> None:
    """Wait until ``p`` holds ``run_dir``'s lock (its PID in the lock file: interpreter started, imports done,
    store about to open), or has exited."""
    deadline = time.monotonic() + timeout
    while p.poll() is None:
        with suppress(OSError, ValueError):
            if json.loads((run_dir / LOCK_NAME).read_text()).get("pid") == p.pid:
                return
        if time.monotonic() > deadline:
            p.kill()
            pytest.fail(f"sxbench (PID {p.pid}) did not take the lock of {run_dir} within {timeout} s")
        time.sleep(0.01)


def png(path: Path, seed: int, size: int = 32) -> Path:
    """A small RGB PNG of seeded noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[pd.DataFrame, float]:
    """The ``SMOKE`` run, uninterrupted: its export and how long its run took (store opened to run finished)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    code, stdout, err = sx_here("run", *SMOKE, "--out", str(out))
    assert code == 0 and summary(stdout)[:3] == (TOTAL, 0, 0), stdout + err
    (seconds,) = query(out, "SELECT finished - started FROM runs")[0]
    return export_frame(out), float(seconds)


# ----------------------------------------------------------------------------------------------------- 1. kill -9
def test_kill_9_at_ten_points_then_the_store_equals_an_uninterrupted_run(tmp_path, reference, zygote):
    """Ten real ``kill -9`` of ``sxbench run`` processes (fork-server children) into one folder, then a run to
    completion: the export equals an uninterrupted run's (no duplicate, no missing row), no temporary file is left,
    each killed run is marked ``killed`` and none stays ``running``.

    Even points kill exactly: the runner's test hook SIGKILLs the process right after its N-th commit (N in 1..2).
    Odd points kill on a timer: a seeded delay within the reference run's duration, scaled by the share of samples
    still to make (a resumed run has less to do) and counted from the moment the child holds the run folder's lock,
    so a slow start does not push every kill before the store opens; a kill may land before the first commit or
    after the work is done, which is valid too."""
    ref, seconds = reference
    out = tmp_path / "killed"
    args = ["run", *SMOKE, "--out", str(out)]
    rng = random.Random(0)
    points = []  # (kind, exit code, samples stored after it)
    for i in range(10):
        n, share = rng.randint(1, 2), rng.random()
        hook = i % 2 == 0
        delay = share * seconds * max(TOTAL - stored_samples(out), 1) / TOTAL
        env = {k: v for k, v in os.environ.items() if k != KILL_AFTER_SAMPLES_ENV}
        if hook:
            env[KILL_AFTER_SAMPLES_ENV] = str(n)
        logs = tmp_path / f"kill{i}"
        p = zygote.start(args, logs, env)
        if not hook:
            wait_holding_lock(out, p)
            time.sleep(delay)
            p.kill()
        rc = p.wait(timeout=PROCESS_TIMEOUT)
        err = logs.with_suffix(".err").read_text()
        assert rc in (0, -signal.SIGKILL), f"point {i} exited {rc}:\n{err}"
        assert "Traceback" not in err, err
        points.append(("hook" if hook else "timer", rc, stored_samples(out)))
    assert any(rc == -signal.SIGKILL and 0 < n < TOTAL for _, rc, n in points), points  # some landed mid-generation

    code, stdout, err = sx_here(*args)
    generated, skipped, failed, _ = summary(stdout)
    assert code == 0 and generated + skipped == TOTAL and failed == 0, (points, stdout, err)
    assert_same_results(export_frame(out), ref)
    leftovers = [p for sub in ("images", "inputs") for p in (out / sub).rglob("*.tmp")]
    assert not leftovers, leftovers

    statuses = [s for (s,) in query(out, "SELECT status FROM runs ORDER BY started")]
    sigkilled = sum(rc == -signal.SIGKILL for _, rc, _ in points)
    hook_kills = sum(kind == "hook" and rc == -signal.SIGKILL for kind, rc, _ in points)
    assert set(statuses) <= {"killed", "finished"} and statuses[-1] == "finished", (statuses, points)
    # a hook kill always has a run row; a timer kill may land before its row exists or after it is finished
    assert hook_kills <= statuses.count("killed") <= sigkilled, (statuses, points)


def test_a_temporary_file_left_by_a_write_killed_midway_is_removed_by_the_next_run(tmp_path):
    """A kill -9 inside ``atomic_write`` leaves ``.<name>.png.<random>.tmp`` beside the output (``mkstemp``'s name);
    the next run of the folder (which holds its lock, so no writer of that file is alive) removes it."""
    out = tmp_path / "run"
    assert sx_here("run", *SMOKE, "--out", str(out))[0] == 0
    done = sorted((out / "images" / "reinhard").glob("*.png"))[0]
    leftovers = [done.parent / f".{done.name}.k1ll3d00.tmp",
                 out / "images" / "identity" / ".0123456789abcdef01234567.png.x9y8z7w6.tmp"]
    for t in leftovers:
        t.write_bytes(done.read_bytes()[: done.stat().st_size // 2])
    code, stdout, err = sx_here("run", *SMOKE, "--out", str(out))
    assert code == 0 and summary(stdout)[:2] == (0, TOTAL), stdout + err
    assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))


def test_a_folder_left_with_only_the_lock_file_is_resumed(tmp_path, reference):
    """A run killed after taking the lock (``RUN/.lock`` exists) and before creating its store leaves a folder
    holding only the lock file: the next run treats it as its run folder, not as a foreign non-empty folder."""
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "gone", "started": "earlier"}))
    code, stdout, err = sx_here("run", *SMOKE, "--out", str(out))
    assert code == 0 and summary(stdout)[:3] == (TOTAL, 0, 0), stdout + err
    assert_same_results(export_frame(out), reference[0])


# ----------------------------------------------------------------------------------------------------- 2. three at once
def test_three_runs_started_together_on_one_folder(tmp_path, reference, zygote):
    """Three ``sxbench run`` processes (fork-server children, so they start within milliseconds of each other) on
    one folder at once: each finishes (exit 0) or is refused at once with the one-line lock message, none prints a
    traceback, at least one finishes, no run row stays ``running``; one more run then leaves exactly an
    uninterrupted run's results."""
    out = tmp_path / "shared"
    args = ["run", *SMOKE, "--out", str(out)]
    procs = [zygote.start(args, tmp_path / f"p{i}") for i in range(3)]
    codes = [p.wait(timeout=PROCESS_TIMEOUT) for p in procs]
    for i, rc in enumerate(codes):
        err = (tmp_path / f"p{i}.err").read_text()
        assert "Traceback" not in err, err
        if rc != 0:
            printed = printed_lines(err)
            assert rc == 2 and len(printed) == 1 and "is in use by" in printed[0], (rc, err)
            assert printed[0].startswith("sxbench: error:") and str(out) in printed[0], printed
    assert 0 in codes, codes
    statuses = [s for (s,) in query(out, "SELECT status FROM runs")]
    assert statuses and "running" not in statuses, statuses

    code, stdout, err = sx_here(*args)
    assert code == 0 and summary(stdout)[:3] == (0, TOTAL, 0), stdout + err
    assert_same_results(export_frame(out), reference[0])


def test_a_run_arriving_while_the_first_creates_its_store_is_told_the_folder_is_in_use(tmp_path):
    """The first run of a new folder takes the lock (``RUN/.lock``) and only then creates ``results.sqlite``; a second
    run arriving in between is refused with the lock message, not told the folder is someone else's. Here the first
    run is this test holding the lock of a folder with no store yet (flock conflicts between two opens of the file,
    in one process too)."""
    from sxbench.lock import run_lock

    out = tmp_path / "new"
    with run_lock(out):
        code, _, err = sx_here("run", *SMOKE, "--out", str(out))
    printed = printed_lines(err)
    assert code == 2 and len(printed) == 1 and "is in use by" in printed[0], err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


# ----------------------------------------------------------------------------------------------------- 3. setups
def test_a_new_resolution_replaces_the_old_outputs(tmp_path):
    """``--resolution 32`` then ``--resolution 48`` into one folder: the second run generates everything again,
    every stored PNG is 48×48 and no 32-pixel sample or file is left."""
    out = tmp_path / "run"
    code, stdout, err = sx_here("run", *SMOKE, "--resolution", "32", "--out", str(out))
    assert code == 0 and summary(stdout)[:3] == (TOTAL, 0, 0), stdout + err
    code, stdout, err = sx_here("run", *SMOKE, "--resolution", "48", "--out", str(out))
    assert code == 0 and summary(stdout)[:3] == (TOTAL, 0, 0), stdout + err  # 8 per method
    files = sorted((out / "images").rglob("*.png"))
    assert len(files) == TOTAL
    for f in files:
        with Image.open(f) as im:
            assert im.size == (48, 48), f
    rows = query(out, "SELECT method, resolution, output_path FROM samples")
    assert len(rows) == TOTAL and {r[1] for r in rows} == {48}
    assert {m: sum(r[0] == m for r in rows) for m in METHODS} == {m: 8 for m in METHODS}
    assert {str(f.relative_to(out)) for f in files} == {r[2] for r in rows}


def test_two_folders_of_the_same_name_get_their_own_run_folders(tmp_path, monkeypatch):
    """``A/photos`` and ``B/photos`` hold files of the same names and other pixels; run each without ``--out``:
    two run folders ``reports/photos-<hash>`` appear, and each one's identity output is its own folder's content."""
    contents = {}
    for seed, parent in enumerate(("A", "B")):
        root = tmp_path / parent / "photos"
        contents[parent] = np.asarray(Image.open(png(root / "content" / "c.png", seed)).convert("RGB"))
        png(root / "style" / "s.png", 10 + seed)
    assert not np.array_equal(contents["A"], contents["B"])
    monkeypatch.chdir(tmp_path)
    made = {}
    for parent in ("A", "B"):
        before = set((tmp_path / "reports").glob("*")) if (tmp_path / "reports").is_dir() else set()
        code, stdout, err = sx_here("run", "--protocol", f"{parent}/photos", "--methods", "identity", "--metrics",
                                    "content_ssim", "--resolution", "32", "--no-progress")
        assert code == 0 and summary(stdout)[:3] == (1, 0, 0), stdout + err
        (new,) = set((tmp_path / "reports").glob("*")) - before
        assert new.name.startswith("photos-"), new
        made[parent] = new
    assert made["A"] != made["B"]
    for parent, run_dir in made.items():
        (rel,) = [r[0] for r in query(run_dir, "SELECT output_path FROM samples WHERE method = 'identity'")]
        np.testing.assert_array_equal(np.asarray(Image.open(run_dir / rel).convert("RGB")), contents[parent])


# ----------------------------------------------------------------------------------------------------- 4. damaged PNG
def test_a_truncated_output_is_generated_again(tmp_path, reference):
    """A stored PNG cut to half its size: the next run regenerates that one sample, and the file decodes again."""
    out = tmp_path / "run"
    assert sx_here("run", *SMOKE, "--out", str(out))[0] == 0
    victim = sorted((out / "images" / "reinhard").glob("*.png"))[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception):
        with Image.open(victim) as im:
            im.load()
    code, stdout, err = sx_here("run", *SMOKE, "--out", str(out))
    assert code == 0 and summary(stdout)[:3] == (1, TOTAL - 1, 0), stdout + err
    with Image.open(victim) as im:
        im.load()
        assert im.size == (64, 64)
    assert_same_results(export_frame(out), reference[0])


# ----------------------------------------------------------------------------------------------------- 5. crafted store
def test_stored_paths_outside_the_run_folder_are_never_read_or_deleted(tmp_path):
    """A crafted ``results.sqlite`` whose output paths name files outside the run folder (an absolute path, a
    ``..`` path): ``report``, ``run`` and ``prune`` leave those files as they were and never print a traceback;
    the run regenerates the samples whose paths were refused."""
    out = tmp_path / "run"
    sentinels = {"abs": png(tmp_path / "outside.png", 1), "up": png(tmp_path / "outside2.png", 2)}
    before = {k: (p.read_bytes(), p.stat().st_mtime_ns) for k, p in sentinels.items()}
    crafted = {"abs": str(sentinels["abs"]), "up": "../outside2.png"}

    def craft(method: str) -> None:
        keys = [k for (k,) in query(out, "SELECT sample_key FROM samples WHERE method = ? ORDER BY pair_id", method)]
        query(out, "UPDATE samples SET output_path = ? WHERE sample_key = ?", crafted["abs"], keys[0])
        query(out, "UPDATE samples SET output_path = ? WHERE sample_key = ?", crafted["up"], keys[1])

    def untouched() -> None:
        for k, p in sentinels.items():
            assert p.is_file() and (p.read_bytes(), p.stat().st_mtime_ns) == before[k], p

    assert sx_here("run", *SMOKE, "--out", str(out))[0] == 0
    for m in METHODS:
        craft(m)

    code, _, err = sx_here("report", str(out))
    assert code == 0 and "Traceback" not in err, err
    html = (out / "index.html").read_text()
    assert "outside.png" not in html and "outside2.png" not in html
    untouched()

    code, stdout, err = sx_here("run", *SMOKE, "--out", str(out))
    assert code == 0 and "Traceback" not in err, stdout + err
    assert summary(stdout)[:3] == (2 * len(METHODS), TOTAL - 2 * len(METHODS), 0), stdout
    paths = [p for (p,) in query(out, "SELECT output_path FROM samples")]
    assert not set(crafted.values()) & set(paths) and all((out / p).is_file() for p in paths)
    untouched()

    craft("reinhard")
    code, stdout, err = sx_here("prune", str(out), "--method", "reinhard")
    assert code == 0 and "removed 8 samples of reinhard" in stdout and "Traceback" not in err, stdout + err
    assert query(out, "SELECT COUNT(*) FROM samples WHERE method = 'reinhard'") == [(0,)]
    untouched()


def test_an_import_replacing_an_earlier_one_never_deletes_outside_the_run_folder(tmp_path):
    """``sxbench import`` removes the outputs of an earlier import of the same name; a crafted path in that import's
    rows (absolute, ``..``) is refused, so the files it names survive."""
    tasks = tmp_path / "t" / "tasks.csv"
    assert sx_here("tasks", "--protocol", "synth-smoke", "--out", str(tasks))[0] == 0
    with tasks.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    out, outs = tmp_path / "run", tmp_path / "outs"
    common = ["--as", "ext", "--protocol", "synth-smoke", "--metrics", ",".join(METRICS), "--out", str(out),
              "--no-progress"]
    for i, r in enumerate(rows):
        png(outs / r["output_file"], i, size=64)
    code, stdout, err = sx_here("import", str(outs), *common)
    assert code == 0 and "8 imported as ext" in stdout, stdout + err
    sentinels = [png(tmp_path / "outside.png", 1), png(tmp_path / "outside2.png", 2)]
    before = [(p.read_bytes(), p.stat().st_mtime_ns) for p in sentinels]
    keys = [k for (k,) in query(out, "SELECT sample_key FROM samples WHERE method = 'ext' ORDER BY pair_id")]
    query(out, "UPDATE samples SET output_path = ? WHERE sample_key = ?", str(sentinels[0]), keys[0])
    query(out, "UPDATE samples SET output_path = ? WHERE sample_key = ?", "../outside2.png", keys[1])

    for i, r in enumerate(rows):  # other pixels: a new import that replaces the first
        png(outs / r["output_file"], 100 + i, size=64)
    code, stdout, err = sx_here("import", str(outs), *common)
    assert code == 0 and "8 samples of an earlier import replaced" in stdout and "Traceback" not in err, stdout + err
    assert [(p.read_bytes(), p.stat().st_mtime_ns) for p in sentinels if p.is_file()] == before


# ----------------------------------------------------------------------------------------------------- 6. Ctrl-C
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_mid_run_is_exit_130_marked_interrupted_and_resumable(tmp_path, sig):
    """SIGINT (Ctrl-C) or SIGTERM to a real ``sxbench run`` once it has committed a sample: exit 130, the last stderr
    line is the one-line "interrupted" message (no traceback), the run row is ``interrupted``; the same command then
    completes and the export equals an uninterrupted run's. The child holds still after its first commit (a test
    hook), so the signal lands mid-run even when a loaded machine slows this process's polling: racing the
    seconds-long run once let it finish first (exit 0)."""
    args = ["--protocol", "synth-smoke", "--seeds", "0,1,2", "--methods", ",".join(METHODS), "--metrics",
            ",".join(METRICS), "--batch-size", "1", "--no-progress"]  # 48 samples, one per batch
    total = 3 * TOTAL
    out = tmp_path / "run"
    p = start(["run", *args, "--out", str(out)], tmp_path / "child", env=os.environ | {PAUSE_AFTER_SAMPLES_ENV: "1"})
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while stored_samples(out) < 1:
        assert p.poll() is None, (tmp_path / "child.err").read_text()
        assert time.monotonic() < deadline, "no sample committed in time"
        time.sleep(0.02)
    os.kill(p.pid, sig)
    rc = p.wait(timeout=PROCESS_TIMEOUT)
    err = (tmp_path / "child.err").read_text()
    assert rc == 130, err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith(INTERRUPTED) and "same command" in last, err
    assert query(out, "SELECT status FROM runs") == [("interrupted",)]
    assert stored_samples(out) == 1

    code, stdout, err = sx_here("run", *args, "--out", str(out))
    generated, skipped, failed, _ = summary(stdout)
    assert (code, generated, skipped, failed) == (0, total - 1, 1, 0), stdout + err
    assert [s for (s,) in query(out, "SELECT status FROM runs ORDER BY started")] == ["interrupted", "finished"]
    assert sx_here("run", *args, "--out", str(tmp_path / "ref"))[0] == 0
    assert_same_results(export_frame(out), export_frame(tmp_path / "ref"))


# ----------------------------------------------------------------------------------------------------- 7. schemas
V2_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, started REAL NOT NULL, finished REAL, status TEXT NOT NULL,
    protocol TEXT NOT NULL, config TEXT NOT NULL, provenance TEXT NOT NULL
);
CREATE TABLE methods (
    method TEXT NOT NULL, method_config TEXT NOT NULL, info TEXT NOT NULL, PRIMARY KEY (method, method_config)
);
CREATE TABLE metrics (
    metric TEXT NOT NULL, version TEXT NOT NULL, info TEXT NOT NULL, PRIMARY KEY (metric, version)
);
CREATE TABLE samples (
    sample_key TEXT PRIMARY KEY, run_id, method, method_config, protocol, protocol_version, pair_id, content_id,
    style_id, seed, split, level, family, status, error, output_path, latency_s, batch_size, peak_memory_bytes,
    memory_kind, device, created REAL NOT NULL
);
CREATE INDEX samples_method ON samples (method, method_config);
CREATE TABLE routing (
    sample_key TEXT NOT NULL, layer TEXT NOT NULL, slot INTEGER NOT NULL, expert INTEGER NOT NULL,
    weight REAL NOT NULL, num_experts INTEGER NOT NULL, PRIMARY KEY (sample_key, layer, slot)
);
CREATE TABLE set_values (
    method TEXT NOT NULL, method_config TEXT NOT NULL, metric TEXT NOT NULL, subset TEXT NOT NULL, value REAL,
    n INTEGER NOT NULL, samples_hash TEXT NOT NULL, version TEXT NOT NULL, backbone TEXT, metric_group TEXT NOT NULL,
    higher_is_better INTEGER NOT NULL, computed REAL NOT NULL, PRIMARY KEY (method, method_config, metric, subset)
);
CREATE TABLE metric_values (
    sample_key, metric, value, higher_is_better, metric_group, version, backbone, PRIMARY KEY (sample_key, metric)
);
"""
"""The tables of store schema 2 (``git show 5b88c5e:sxbench/store.py``, its f-string expanded)."""
V2_SAMPLE_COLUMNS = ("sample_key", "run_id", "method", "method_config", "protocol", "protocol_version", "pair_id",
                     "content_id", "style_id", "seed", "split", "level", "family", "status", "error", "output_path",
                     "latency_s", "batch_size", "peak_memory_bytes", "memory_kind", "device", "created")
V2_VALUE_COLUMNS = ("sample_key", "metric", "value", "higher_is_better", "metric_group", "version", "backbone")


def v2_key(method_config: str, protocol: str, protocol_version: str, pair_id: str, content_id: str, style_id: str,
           seed: int) -> str:
    """A sample key as schema 2 made it: no setup."""
    return stable_hash([method_config, protocol, protocol_version, pair_id, content_id, style_id, seed], 24)


def to_schema_2(run_dir: Path) -> None:
    """Rewrite a run folder as sxbench at schema 2 left it: the v2 tables, keys without setup, PNGs named by
    those keys (the runs, methods and metrics rows are what that version wrote too)."""
    src = sqlite3.connect(run_dir / DB_NAME)
    src.row_factory = sqlite3.Row
    tables = {t: [dict(r) for r in src.execute(f"SELECT * FROM {t}")]
              for t in ("runs", "methods", "metrics", "samples", "metric_values")}
    src.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{run_dir / DB_NAME}{suffix}").unlink(missing_ok=True)
    old = {}
    for s in tables["samples"]:
        key = v2_key(s["method_config"], s["protocol"], s["protocol_version"], s["pair_id"], s["content_id"],
                     s["style_id"], int(s["seed"]))
        old[s["sample_key"]] = key
        rel = f"images/{s['method']}/{key}.png"
        (run_dir / s["output_path"]).rename(run_dir / rel)
        s |= {"sample_key": key, "output_path": rel}
    tables["samples"] = [{k: s[k] for k in V2_SAMPLE_COLUMNS} for s in tables["samples"]]
    tables["metric_values"] = [{k: old[v[k]] if k == "sample_key" else v[k] for k in V2_VALUE_COLUMNS}
                               for v in tables["metric_values"]]
    c = sqlite3.connect(run_dir / DB_NAME)
    with c:
        c.execute("PRAGMA journal_mode=WAL")
        c.executescript(V2_SCHEMA)
        c.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '2')")
        for table, rows in tables.items():
            cols = list(rows[0])
            c.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                          [[r[k] for k in cols] for r in rows])
    c.close()


def test_a_schema_2_store_migrates_and_keeps_every_output(tmp_path, reference):
    """A store as schema 2 wrote it opens, migrates to the current schema and is adopted: nothing is generated again, the samples
    carry their setup and full key, and the export's values equal a fresh run's (the PNGs keep their old names)."""
    out = tmp_path / "run"
    assert sx_here("run", *SMOKE, "--out", str(out))[0] == 0
    to_schema_2(out)
    assert query(out, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]
    assert "setup" not in {r[1] for r in query(out, "PRAGMA table_info(samples)")}

    code, stdout, err = sx_here("run", *SMOKE, "--out", str(out))
    assert code == 0 and summary(stdout) == (0, TOTAL, 0, 0), stdout + err
    assert query(out, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    spec = registry.create_protocol("synth-smoke").spec
    setups = {p.pair_id: spec.setup(p) for p in spec.pairs}
    rows = query(out, "SELECT pair_id, setup, resolution FROM samples")
    assert len(rows) == TOTAL and all(setup == setups[pair] and res == 64 for pair, setup, res in rows), rows
    assert_same_results(export_frame(out), reference[0], ignore=("output_path",))


def test_a_store_of_a_newer_schema_is_refused(tmp_path):
    """A store whose ``meta`` says schema 99: ``sxbench run`` exits 2 with one line naming the file and "newer",
    and leaves the store as it was."""
    out = tmp_path / "run"
    with Store(out) as st:
        st.conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    code, stdout, err = sx_here("run", *SMOKE, "--out", str(out))
    printed = printed_lines(err)
    assert code == 2 and len(printed) == 1 and "Traceback" not in err, err
    assert str(out / DB_NAME) in printed[0] and "newer" in printed[0], printed
    assert query(out, "SELECT value FROM meta WHERE key = 'schema_version'") == [("99",)]
    assert query(out, "SELECT COUNT(*) FROM runs") == [(0,)]


# ----------------------------------------------------------------------------------------------------- 8. bad outputs
class WrongSize(Method):
    """Returns a 10×10 image whatever the protocol's resolution: a method bug the runner must catch."""

    name = "wrong-size"

    def stylize_batch(self, contents, styles, *, seeds):
        return [Image.new("RGB", (10, 10), (200, 30, 30)) for _ in contents]


class AlwaysNaN(ImageMetric):
    """A metric that fails on every image (NaN); counts the images it is asked to score."""

    info = MetricInfo("always_nan", True, (0.0, 1.0), "fidelity", frozenset(), description="NaN for every output.")
    scored: ClassVar[list[int]] = []

    def score(self, output, *, content=None, style=None, target=None, keys=None):
        type(self).scored.append(output.shape[0])
        return torch.full((output.shape[0],), float("nan"))


@pytest.fixture
def faulty_plugins():
    registry.methods.register("wrong-size", WrongSize)
    registry.metrics.register("always_nan", AlwaysNaN)
    AlwaysNaN.scored.clear()
    yield
    registry.methods.unregister("wrong-size")
    registry.metrics.unregister("always_nan")


def test_wrong_size_outputs_become_error_rows(tmp_path, faulty_plugins):
    """A method returning 10×10 images under a 64² protocol: every sample is an ``error`` row naming both sizes,
    nothing is written or scored for it, and the other method's samples are untouched."""
    s = Runner(RunConfig("synth-smoke", methods=("wrong-size", "identity"), metrics=("content_ssim",), out=tmp_path,
                         batch_size=3, progress=False)).run()
    assert s.failed == 8 and s.generated == 8
    with Store(tmp_path) as st:
        samples, values = st.samples(), st.values()
    bad = samples[samples.method == "wrong-size"]
    assert len(bad) == 8 and set(bad.status) == {"error"} and bad.output_path.isna().all()
    assert all("10×10" in e and "64×64" in e for e in bad.error), list(bad.error)
    assert not (tmp_path / "images" / "wrong-size").exists()
    assert set(values.method) == {"identity"} and len(values) == 8


def test_a_nan_metric_is_stored_as_null_and_retried_only_when_asked(tmp_path, faulty_plugins):
    """A metric returning NaN is stored as NULL (failed), not computed again by the next run, and computed again
    with ``retry_failed``."""
    config = RunConfig("synth-smoke", methods=("identity",), metrics=("content_ssim", "always_nan"), out=tmp_path,
                       batch_size=3, progress=False)
    Runner(config).run()
    assert sum(AlwaysNaN.scored) == 8

    def stored() -> dict[str, list]:
        rows = query(tmp_path, "SELECT metric, value FROM metric_values")
        return {m: [v for n, v in rows if n == m] for m in ("content_ssim", "always_nan")}

    assert stored()["always_nan"] == [None] * 8 and None not in stored()["content_ssim"]
    again = Runner(config).run()
    assert again.rescored == 0 and sum(AlwaysNaN.scored) == 8
    retried = Runner(replace(config, retry_failed=True)).run()
    assert retried.rescored == 8 and retried.generated == 0 and sum(AlwaysNaN.scored) == 16
    assert stored()["always_nan"] == [None] * 8 and len(stored()["content_ssim"]) == 8


# ----------------------------------------------------------------------------------------------------- 9. wrong --out
def test_out_that_is_not_a_run_folder_is_refused_and_left_alone(tmp_path):
    """``--out`` naming a non-empty folder without ``results.sqlite`` (a website, say), or a file: exit 2 with one
    line, and nothing in it is written, replaced or added."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>my page</h1>")
    (site / "notes.txt").write_text("keep me")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in site.iterdir()}
    code, stdout, err = sx_here("run", *SMOKE, "--out", str(site))
    printed = printed_lines(err)
    assert code == 2 and len(printed) == 1 and "not a run folder" in printed[0] and str(site) in printed[0], err
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in site.iterdir()} == before

    code, _, err = sx_here("run", *SMOKE, "--out", str(site / "notes.txt"))
    printed = printed_lines(err)
    assert code == 2 and len(printed) == 1 and "is a file" in printed[0], err
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in site.iterdir()} == before
