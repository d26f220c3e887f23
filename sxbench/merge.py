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

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from sxbench.store import DB_NAME, Store, contained, read_only

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


def check_compatible(described: Sequence[tuple[Path, dict[str, Any]]], *, check_metrics: bool = True) -> None:
    """``MergeConflict`` (one line) at the first pair of folders that cannot be merged: another protocol, a method
    run with other parameters (no configuration in common), a metric computed only in other versions (not checked
    with ``check_metrics=False``: the folder being merged into, whose older values the finishing pass rescores)."""
    (first, ref), others = described[0], described[1:]
    for path, d in others:
        if d["protocol"] != ref["protocol"]:
            raise MergeConflict(f"cannot merge {first} and {path}: their protocols differ "
                                f"({_diff(ref['protocol'], d['protocol'])}); merge only shards of one run")
    # a folder may hold several configurations of one method (its history): two folders conflict when they share
    # none, i.e. they never ran it the same way
    configs: dict[str, list[tuple[Path, dict[str, dict[str, Any]]]]] = {}
    for path, d in described:
        per: dict[str, dict[str, dict[str, Any]]] = {}
        for (method, config), params in d["methods"].items():
            per.setdefault(method, {})[config] = params
        for method, mine in per.items():
            for other_path, theirs in configs.get(method, []):
                if not set(mine) & set(theirs):
                    a, b = theirs[min(theirs)], mine[min(mine)]
                    raise MergeConflict(f"cannot merge {other_path} and {path}: they ran {method} with other "
                                        f"parameters ({_diff(a, b) or 'another method version or weights'}); run "
                                        "both with the same --param values")
            configs.setdefault(method, []).append((path, mine))
    if check_metrics:
        versions: dict[str, list[tuple[Path, set[str]]]] = {}
        for path, d in described:
            for metric, mine in d["metric_versions"].items():
                for other_path, theirs in versions.get(metric, []):
                    if not mine & theirs:
                        raise MergeConflict(f"cannot merge {other_path} and {path}: metric {metric} was computed in "
                                            f"version {'/'.join(sorted(theirs))} there and {'/'.join(sorted(mine))} "
                                            "here; run `sxbench score` on the older folder first")
                versions.setdefault(metric, []).append((path, mine))


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
            if f.is_file() and not f.is_symlink() and not f.name.startswith("."):
                n += _link(f, dst / f.relative_to(src))
    return n


def copy_records(out_store: Store, src: Path, out: Path) -> tuple[int, int, int]:
    """Copy ``src``'s runs, method and metric registrations, samples (with their values and routing) and files
    into ``out``; returns ``(added, duplicates, replaced errors)``. The records go in one transaction after the
    files they point to, so a crash leaves stray files at worst, never a row without its PNG."""
    with contextlib.closing(read_only(src)) as con:
        incoming = {k: (status, path) for k, status, path in
                    con.execute("SELECT sample_key, status, output_path FROM samples")}
    have = dict(out_store.conn.execute("SELECT sample_key, status FROM samples").fetchall())
    replace = [k for k, (status, _) in incoming.items() if status == "ok" and have.get(k) == "error"]
    new = [k for k in incoming if k not in have] + replace
    lost = []
    for k in new:
        rel = incoming[k][1]
        if rel:  # paths read from a database are used only inside their run folders
            source = contained(src, rel)
            if not source.is_file():  # an output deleted since: not merged; the next run makes it again
                lost.append(k)
                continue
            _link(source, contained(out, rel))
    if lost:
        log.warning("%s: %d stored outputs are missing their PNG and were not merged (first: %s)", src, len(lost),
                    incoming[lost[0]][1])
        new = [k for k in new if k not in set(lost)]
        replace = [k for k in replace if k not in set(lost)]
    _link_tree(src / "inputs", out / "inputs")
    _link_tree(src / "cache", out / "cache")
    conn = out_store.conn
    conn.execute("ATTACH DATABASE ? AS src", (str(src / DB_NAME),))  # only read
    try:
        with out_store._transaction():
            for table, keys in (("merge_keys", new), ("merge_replace", replace)):
                conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} (sample_key TEXT PRIMARY KEY)")
                conn.execute(f"DELETE FROM {table}")
                conn.executemany(f"INSERT INTO {table} VALUES (?)", [(k,) for k in keys])
            for table in ("metric_values", "routing", "samples"):  # error rows an output replaces
                conn.execute(f"DELETE FROM main.{table} WHERE sample_key IN (SELECT sample_key FROM merge_replace)")
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
          device: str = "cpu", weights_dir: str | None = None, locked: bool = False,
          record: dict[str, Any] | None = None) -> MergeSummary:
    """Merge the run folders ``sources`` into ``out`` (created, or a run folder of the same protocol); see the
    module docstring. ``locked``: the caller holds ``out``'s lock already. ``record``: the run configuration that
    finishes ``out`` (default: the last source's latest run)."""
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
    check_compatible(described)
    if (out / DB_NAME).is_file():
        with Store(out) as st:
            empty = st.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
        if not empty:  # its older metric values are rescored by the finishing pass, not refused
            check_compatible([(out, describe(out)), *described], check_metrics=False)
    record = record or described[-1][1]["record"]
    added = dupes = replaced = 0
    with nullcontext() if locked else run_lock(out):
        from sxbench.runner import remove_stale_temporaries

        remove_stale_temporaries(out)
        with Store(out) as store:
            store.close_stale_runs()
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
