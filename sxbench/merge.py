"""Run folders made apart, brought together: ``sxbench merge A B … --out C`` and ``sxbench score RUN``.

Where runs come apart:

- ``sxbench run --shard i/N`` (Slurm arrays, machines without a shared filesystem): each job generates every
  N-th sample of each method, from ``i``, into its own run folder, and scores them with the per-image metrics;
- ``torchrun``/``accelerate launch -m sxbench run``: each rank does the same into ``RUN/shards/rank<i>-of-<N>``
  and rank 0 merges the shards into ``RUN`` at the end (``sxbench.distributed``).

Why per-rank stores merged at the end rather than rank 0 writing what the ranks send: no SQLite database is ever
written by two processes (its locking is unreliable on the network filesystems clusters share); a rank never
waits on another per sample; a rank that dies leaves its own committed samples and nothing half-written; and
shards and ranks share one merge, tested once.

``merge`` refuses, on one line naming the folders and what differs, folders whose protocol (name, version,
parameters, resolution, resize policy) differs, that ran one method with other parameters, or that computed one
metric in another version. Samples stored twice (the same key) are kept once, an ``ok`` over an ``error``. Every
PNG, input image and cached feature file is hard-linked (copied across filesystems). Then the merged folder is
finished as a run would be: missing per-image values, set metrics, expert statistics, and the report.

``score`` is that finishing pass alone over a stored run (``--metrics`` adds metrics, ``--device`` puts the
backbones elsewhere than the generator): nothing is generated.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from sxbench.store import DB_NAME, Store

log = logging.getLogger(__name__)

PROTOCOL_FIELDS = ("protocol", "protocol_version", "protocol_params", "resolution", "resize_policy")
"""What two run folders must agree on to be merged."""


class MergeConflict(ValueError):
    """Run folders that cannot be merged; the message names them and what differs."""


@dataclass(frozen=True)
class MergeSummary:
    out: Path
    added: int
    """Samples new to ``out``."""
    duplicates: int
    """Samples already there (or in an earlier source), kept once."""
    replaced_errors: int
    """Error rows replaced by an ``ok`` sample of the same key."""
    rescored: int


def _require(run_dir: Path) -> None:
    if not (run_dir / DB_NAME).is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no {DB_NAME}); pass folders written by `sxbench run`")


def describe(run_dir: str | Path) -> dict[str, Any]:
    """What a run folder holds, for comparing: its protocol fields (from its latest run), the configuration that
    rebuilds its protocol (``protocol_args``, seeds, limit, metrics, methods), the parameters of every method
    configuration with samples, and every metric's version."""
    run_dir = Path(run_dir)
    _require(run_dir)
    with Store(run_dir) as store:
        runs = [json.loads(c) for c in store.runs().config]
        methods = store.methods()
        used = {(m, c) for m, c in store.conn.execute("SELECT DISTINCT method, method_config FROM samples")}
        versions: dict[str, set[str]] = {}
        for metric, version in store.conn.execute("SELECT DISTINCT metric, version FROM metric_values"):
            versions.setdefault(metric, set()).add(version)
    recorded = [r for r in runs if "protocol" in r]
    if not recorded:
        raise ValueError(f"{run_dir}: its store records no run; run `sxbench run --out {run_dir}` first")
    last = next((r for r in reversed(recorded) if "protocol_args" in r), recorded[-1])
    return {"protocol": {k: last.get(k) for k in PROTOCOL_FIELDS}, "record": last,
            "methods": {key: methods.get(key, {}).get("params", {}) for key in used},
            "metric_versions": versions}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v}
    return out


def _diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    """``key=A vs B`` for every (nested) key whose values differ; a value nested in a dict is named by its path."""
    fa, fb = _flat(a), _flat(b)
    keys = sorted(set(fa) | set(fb))
    return ", ".join(f"{k}={fa.get(k)!r} vs {fb.get(k)!r}" for k in keys if fa.get(k) != fb.get(k))


def check_compatible(described: Sequence[tuple[Path, dict[str, Any]]]) -> None:
    """``MergeConflict`` (one line) at the first pair of folders that cannot be merged."""
    (first, ref), others = described[0], described[1:]
    for path, d in others:
        if d["protocol"] != ref["protocol"]:
            raise MergeConflict(f"cannot merge {first} and {path}: their protocols differ "
                                f"({_diff(ref['protocol'], d['protocol'])}); merge only shards of one run")
    by_method: dict[str, tuple[Path, str, dict[str, Any]]] = {}
    metric_versions: dict[str, tuple[Path, set[str]]] = {}
    for path, d in described:
        for (method, config), params in sorted(d["methods"].items()):
            seen = by_method.get(method)
            if seen is not None and seen[1] != config and seen[0] != path:
                raise MergeConflict(f"cannot merge {seen[0]} and {path}: they ran {method} with other parameters "
                                    f"({_diff(seen[2], params) or 'another method version'}); run both with the "
                                    "same --param values")
            by_method.setdefault(method, (path, config, params))
        for metric, versions in d["metric_versions"].items():
            seen_m = metric_versions.get(metric)
            if seen_m is not None and seen_m[1] != versions:
                raise MergeConflict(f"cannot merge {seen_m[0]} and {path}: metric {metric} was computed in version "
                                    f"{'/'.join(sorted(seen_m[1]))} there and {'/'.join(sorted(versions))} here; "
                                    "run `sxbench score` on the older folder first")
            metric_versions.setdefault(metric, (path, versions))


def _link(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` to ``dst`` (a copy across filesystems); False when ``dst`` exists already."""
    if dst.exists():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)
    return True


def _link_tree(src: Path, dst: Path) -> int:
    n = 0
    if src.is_dir():
        for f in src.rglob("*"):
            if f.is_file() and not f.name.startswith("."):
                n += _link(f, dst / f.relative_to(src))
    return n


def copy_records(out_store: Store, src: Path, out: Path) -> tuple[int, int, int]:
    """Copy ``src``'s runs, method and metric registrations, samples (with their values and routing) and files
    into ``out``; returns ``(added, duplicates, replaced errors)``. The records go in one transaction after the
    files they point to, so a crash leaves stray files at worst, never a row without its PNG."""
    with sqlite3.connect(f"file:{src / DB_NAME}?mode=ro", uri=True) as con:
        incoming = {k: (status, path) for k, status, path in
                    con.execute("SELECT sample_key, status, output_path FROM samples")}
    have = dict(out_store.conn.execute("SELECT sample_key, status FROM samples").fetchall())
    replace = [k for k, (status, _) in incoming.items() if status == "ok" and have.get(k) == "error"]
    new = [k for k in incoming if k not in have] + replace
    for k in new:
        rel = incoming[k][1]
        if rel:
            _link(src / rel, out / rel)
    _link_tree(src / "inputs", out / "inputs")
    _link_tree(src / "cache", out / "cache")
    conn = out_store.conn
    conn.execute("ATTACH DATABASE ? AS src", (f"file:{src / DB_NAME}?mode=ro",))
    try:
        with out_store._transaction():
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS merge_keys (sample_key TEXT PRIMARY KEY)")
            conn.execute("DELETE FROM merge_keys")
            conn.executemany("INSERT INTO merge_keys VALUES (?)", [(k,) for k in new])
            if replace:
                marks = ", ".join("?" * len(replace))
                for table in ("metric_values", "routing", "samples"):
                    conn.execute(f"DELETE FROM {table} WHERE sample_key IN ({marks})", replace)
            conn.execute("INSERT OR IGNORE INTO runs SELECT * FROM src.runs")
            conn.execute("INSERT OR IGNORE INTO methods SELECT * FROM src.methods")
            conn.execute("INSERT OR IGNORE INTO metrics SELECT * FROM src.metrics")
            for table in ("samples", "metric_values", "routing"):
                cols = [r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")]
                names = ", ".join(cols)
                conn.execute(f"INSERT OR IGNORE INTO main.{table} ({names}) SELECT {names} FROM src.{table} "
                             "WHERE sample_key IN (SELECT sample_key FROM merge_keys)")
    finally:
        conn.execute("DETACH DATABASE src")
    return len(new) - len(replace), len(incoming) - len(new), len(replace)


def rebuild_config(record: dict[str, Any], out: Path, *, metrics: Sequence[str] | None = None,
                   device: str = "cpu", methods: Sequence[str] = (), progress: bool = True,
                   weights_dir: str | None = None) -> Any:
    """The ``RunConfig`` that finishes a stored run: its protocol from the run record (``protocol_args``),
    seeds, limit, and metrics (``metrics`` added to the recorded ones)."""
    from sxbench.runner import RunConfig

    if "protocol_args" not in record:
        raise ValueError(f"{out}: its runs predate records of the protocol's arguments; run `sxbench run --out {out}` "
                         "once with this sxbench (nothing stored is regenerated), then try again")
    from sxbench import registry

    # the record lists every metric the run computed; the expert statistics come with any evaluator
    names = [m for m in record.get("metrics") or [] if m in registry.metrics]
    names += [m for m in metrics or () if m not in names]
    return RunConfig(protocol=record["protocol_name"] if "protocol_name" in record else record["protocol"],
                     methods=tuple(methods), out=out, protocol_args=dict(record["protocol_args"]),
                     seeds=tuple(record["seeds"]), limit=record.get("limit"), metrics=tuple(names) or None,
                     device=device, progress=progress, weights_dir=weights_dir)


def finish_folder(out: Path, record: dict[str, Any], *, metrics: Sequence[str] | None = None, device: str = "cpu",
                  progress: bool = True, weights_dir: str | None = None, kind: str = "score") -> tuple[int, dict[str, str]]:
    """Score what ``out`` lacks with ``record``'s protocol (the caller holds its lock): per-image values, set
    metrics, expert statistics; recorded as a run of ``kind``. Returns ``(rescored samples, skipped metrics)``."""
    from sxbench.runner import closing_run, prepare, provenance, run_record

    with Store(out) as store:
        methods = sorted({m for (m,) in store.conn.execute("SELECT DISTINCT method FROM samples")})
    cfg = rebuild_config(record, out, metrics=metrics, device=device, methods=methods, progress=progress,
                         weights_dir=weights_dir)
    protocol, pairs, seeds, evaluator = prepare(cfg)
    with Store(out) as store:
        config = run_record(protocol.spec, seeds, cfg.limit, len(pairs), methods, evaluator) | {
            "kind": kind, "protocol_name": cfg.protocol, "protocol_args": cfg.protocol_args, "device": device}
        prov = provenance(device) | {"skipped_metrics": dict(evaluator.skipped)}
        run_id = store.begin_run(protocol.spec.name, config, prov)
        with closing_run(store, run_id, prov):
            evaluator.register(store)
            rescored = evaluator.finish(store, out, methods)
    return rescored, dict(evaluator.skipped)


def merge(sources: Sequence[str | Path], out: str | Path, *, finish: bool = True, progress: bool = True,
          device: str = "cpu", weights_dir: str | None = None, locked: bool = False) -> MergeSummary:
    """Merge the run folders ``sources`` into ``out`` (created, or a run folder of the same protocol); see the
    module docstring. ``locked``: the caller holds ``out``'s lock already."""
    from contextlib import nullcontext

    from sxbench.lock import run_lock

    out = Path(out)
    sources = [Path(s) for s in sources]
    if not sources:
        raise ValueError("sxbench merge needs at least one run folder to merge")
    for s in sources:
        _require(s)
        if s.resolve() == out.resolve():
            raise ValueError(f"{s} is the --out folder; merge other folders into it")
    described = [(s, describe(s)) for s in sources]
    if (out / DB_NAME).is_file():
        with Store(out) as st:
            empty = st.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
        if not empty:
            described.insert(0, (out, describe(out)))
    check_compatible(described)
    record = described[-1][1]["record"]
    added = dupes = replaced = 0
    with nullcontext() if locked else run_lock(out):
        with Store(out) as store:
            for src in sources:
                a, d, r = copy_records(store, src, out)
                added, dupes, replaced = added + a, dupes + d, replaced + r
                log.info("merged %s: %d new samples, %d already there", src, a, d)
        rescored = 0
        if finish:
            rescored = finish_folder(out, record, progress=progress, device=device, weights_dir=weights_dir,
                                     kind="merge")[0]
    return MergeSummary(out, added, dupes, replaced, rescored)


def score(run_dir: str | Path, *, metrics: Sequence[str] | None = None, device: str = "cpu", progress: bool = True,
          weights_dir: str | None = None) -> tuple[int, dict[str, str]]:
    """Score a stored run again without generating: values it lacks (``metrics`` adds metrics to the recorded
    ones), set metrics, expert statistics. Returns ``(rescored samples, skipped metrics)``."""
    from sxbench.lock import run_lock

    run_dir = Path(run_dir)
    record = describe(run_dir)["record"]
    with run_lock(run_dir):
        return finish_folder(run_dir, record, metrics=metrics, device=device, progress=progress,
                             weights_dir=weights_dir)
