"""The results store: one SQLite database (WAL) per run folder, PNG outputs beside it.

Tables: ``runs``, ``methods``, ``metrics``, ``samples`` (one row per (method config, protocol, pair, seed))
and ``metric_values`` (long format, one value per row). A finished sample and its metric values are
written in one transaction, so a process killed at any point leaves either the whole sample or nothing.

Schema versions (``meta.schema_version``, read at every open):

1. method parameters held the checkpoint path and the reproduce command;
2. those are the method's ``provenance``, outside ``config_hash`` (``Store._migrate_provenance``);
3. samples record their ``setup`` (``ProtocolSpec.setup``: resolution, resize policy, options, input bytes),
   which enters the sample key, and their ``resolution``; metric values record the ``weights`` sha256 of the
   backbone that computed them; a ``NULL`` value is a metric that failed on that sample (not retried unless
   asked). Version-2 samples get ``setup = ''``: the runner moves each onto its full key when the run that made
   it proves the same setup (``sxbench.runner.reconcile``), else it is regenerated;
4. set values carry their uncertainty: ``ci_low``/``ci_high`` (95%), ``std`` (a metric's own spread: KID over
   subsets), ``n_ref`` (distinct references), the bootstrap ``replicates`` (float64 bytes) and ``boot`` (which draws
   made them: replicates with the same ``boot`` are paired). Older rows get NULLs and are recomputed, their metric
   versions being older; ``artfid`` rows are dropped (the metric is ``artfid_st`` now: ``RENAMED_SET_METRICS``).

Opening an older store migrates it in place, each step in one transaction; a store written by a newer sxbench is
refused (``StoreVersionError``). Every insert names its columns.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from sxbench.records import IMPORTED_VERSION, MethodInfo, MetricInfo, MetricValue, SampleRecord, sample_key_of

log = logging.getLogger(__name__)

DB_NAME = "results.sqlite"
SCHEMA_VERSION = 4
"""See the module docstring for what each version changed."""
LEGACY_PROVENANCE = ("checkpoint", "reproduce")
"""Keys that schema-1 stores kept in method ``params`` (and so in ``config_hash``) and that are provenance."""

_SAMPLE_COLUMNS = [f.name for f in fields(SampleRecord)]
_SET_EXTRA = (("ci_low", "REAL"), ("ci_high", "REAL"), ("std", "REAL"), ("n_ref", "INTEGER"), ("replicates", "BLOB"),
              ("boot", "TEXT"))
"""Columns schema 4 added to ``set_values``."""
RENAMED_SET_METRICS = {"artfid": "artfid_st"}
"""Set metrics renamed by schema 4 (their values go; the next run computes them under the new name)."""
_VALUE_COLUMNS = [f.name for f in fields(MetricValue)]

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, started REAL NOT NULL, finished REAL, status TEXT NOT NULL,
    protocol TEXT NOT NULL, config TEXT NOT NULL, provenance TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS methods (
    method TEXT NOT NULL, method_config TEXT NOT NULL, info TEXT NOT NULL, PRIMARY KEY (method, method_config)
);
CREATE TABLE IF NOT EXISTS metrics (
    metric TEXT NOT NULL, version TEXT NOT NULL, info TEXT NOT NULL, PRIMARY KEY (metric, version)
);
CREATE TABLE IF NOT EXISTS samples (
    {", ".join(c + (" TEXT PRIMARY KEY" if c == "sample_key" else "") for c in _SAMPLE_COLUMNS)}, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_method ON samples (method, method_config);
CREATE TABLE IF NOT EXISTS routing (
    sample_key TEXT NOT NULL, layer TEXT NOT NULL, slot INTEGER NOT NULL, expert INTEGER NOT NULL,
    weight REAL NOT NULL, num_experts INTEGER NOT NULL, PRIMARY KEY (sample_key, layer, slot)
);
CREATE TABLE IF NOT EXISTS set_values (
    method TEXT NOT NULL, method_config TEXT NOT NULL, metric TEXT NOT NULL, subset TEXT NOT NULL, value REAL,
    n INTEGER NOT NULL, samples_hash TEXT NOT NULL, version TEXT NOT NULL, backbone TEXT, metric_group TEXT NOT NULL,
    higher_is_better INTEGER NOT NULL, computed REAL NOT NULL, {", ".join(f"{c} {t}" for c, t in _SET_EXTRA)},
    PRIMARY KEY (method, method_config, metric, subset)
);
CREATE TABLE IF NOT EXISTS metric_values (
    {", ".join(_VALUE_COLUMNS)}, PRIMARY KEY (sample_key, metric)
);
"""


class StoreVersionError(ValueError):
    """A store written by a newer sxbench (a schema this code does not know)."""


class UnsafePathError(ValueError):
    """A path read from a store that points outside its run folder (absolute, ``..``, or a symlink out)."""


def contained(root: str | Path, rel: str | os.PathLike) -> Path:
    """``root / rel`` resolved, if it stays inside ``root``; else ``UnsafePathError``. Every path read from a
    database goes through this before a read or a delete: a crafted ``results.sqlite`` must not reach other files."""
    base = Path(root).resolve()
    rel = Path(rel)
    if rel.is_absolute() or ".." in rel.parts:
        raise UnsafePathError(f"{base / DB_NAME}: stored path {str(rel)!r} points outside the run folder; refused "
                              "(the database was edited or comes from elsewhere)")
    path = (base / rel).resolve()
    if path != base and base not in path.parents:
        raise UnsafePathError(f"{base / DB_NAME}: stored path {str(rel)!r} resolves to {path}, outside the run folder; "
                              "refused (a symlink points out)")
    return path


class Store:
    """Open (creating if needed) the store of a run folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / DB_NAME
        self.conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        found = self._stored_version()
        if found is not None and found > SCHEMA_VERSION:
            self.conn.close()
            raise StoreVersionError(f"{self.path} was written by a newer sxbench (store schema {found}; this one reads "
                                    f"up to {SCHEMA_VERSION}): upgrade sxbench (pip install -U sxbench), or use "
                                    "another --out")
        if found is None:  # a new store: the current schema, nothing to migrate
            with self._transaction():
                self._create_tables()
                self.conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                                  (str(SCHEMA_VERSION),))
        elif found < SCHEMA_VERSION:
            with self._transaction():
                self._create_tables()  # tables older versions lacked; existing ones are migrated below
            self._migrate_provenance()
            self._migrate_setup()
            self._migrate_set_intervals()

    def _create_tables(self) -> None:
        for stmt in filter(str.strip, _SCHEMA.split(";")):
            self.conn.execute(stmt)

    def _stored_version(self) -> int | None:
        """The store's schema version; ``None`` for a new (empty) database, 1 for one from before ``meta``."""
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            return 1 if "samples" in tables else None
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 1

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------- writes
    def begin_run(self, protocol: str, config: dict[str, Any], provenance: dict[str, Any]) -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.conn.execute(
            "INSERT INTO runs (run_id, started, finished, status, protocol, config, provenance) "
            "VALUES (?, ?, NULL, 'running', ?, ?, ?)",
            (run_id, time.time(), protocol, json.dumps(config, default=str), json.dumps(provenance, default=str)),
        )
        return run_id

    def finish_run(self, run_id: str, provenance: dict[str, Any] | None = None, status: str = "finished") -> None:
        """Close a run: ``finished``, or ``interrupted`` (Ctrl-C, SIGTERM) or ``failed`` (an error stopped it)."""
        if self.conn.in_transaction:  # interrupted between BEGIN and its block: that write is abandoned, not this one
            self.conn.execute("ROLLBACK")
        if provenance is None:
            self.conn.execute("UPDATE runs SET finished = ?, status = ? WHERE run_id = ?",
                              (time.time(), status, run_id))
        else:
            self.conn.execute(
                "UPDATE runs SET finished = ?, status = ?, provenance = ? WHERE run_id = ?",
                (time.time(), status, json.dumps(provenance, default=str), run_id),
            )

    def register_method(self, info: MethodInfo) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO methods (method, method_config, info) VALUES (?, ?, ?)",
            (info.name, info.config_hash, json.dumps(info.to_dict())),
        )

    def register_metric(self, info: MetricInfo) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO metrics (metric, version, info) VALUES (?, ?, ?)",
            (info.name, info.version, json.dumps(info.to_dict())),
        )

    def write_sample(self, sample: SampleRecord, values: Iterable[MetricValue] = (),
                     routing: Iterable[tuple[str, int, int, float, int]] = ()) -> None:
        """Insert a finished sample, its metric values and its expert routing (rows ``(layer, slot, expert,
        weight, num_experts)``) atomically, replacing an earlier error row."""
        row = asdict(sample)
        with self._transaction():
            self.conn.execute(
                f"INSERT OR REPLACE INTO samples ({', '.join(_SAMPLE_COLUMNS)}, created) "
                f"VALUES ({', '.join('?' * len(_SAMPLE_COLUMNS))}, ?)",
                [row[c] for c in _SAMPLE_COLUMNS] + [time.time()],
            )
            self._insert_values(values)
            self.conn.executemany("INSERT OR REPLACE INTO routing (sample_key, layer, slot, expert, weight, "
                                  "num_experts) VALUES (?, ?, ?, ?, ?, ?)",
                                  [(sample.sample_key, *r) for r in routing])

    def write_values(self, values: Iterable[MetricValue]) -> None:
        """Insert metric values of existing samples in one transaction."""
        with self._transaction():
            self._insert_values(values)

    def _insert_values(self, values: Iterable[MetricValue]) -> None:
        self.conn.executemany(
            f"INSERT OR REPLACE INTO metric_values ({', '.join(_VALUE_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_VALUE_COLUMNS))})",
            [[asdict(v)[c] for c in _VALUE_COLUMNS] for v in values],
        )

    def delete_samples(self, keys: Iterable[str]) -> int:
        """Remove samples with their metric values and routing in one transaction; returns how many existed.
        Their PNG files are the caller's to remove."""
        keys = list(keys)
        n = 0
        with self._transaction():
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                marks = ", ".join("?" * len(chunk))
                self.conn.execute(f"DELETE FROM metric_values WHERE sample_key IN ({marks})", chunk)
                self.conn.execute(f"DELETE FROM routing WHERE sample_key IN ({marks})", chunk)
                n += self.conn.execute(f"DELETE FROM samples WHERE sample_key IN ({marks})", chunk).rowcount
        return n

    def prune(self, method: str, *, config: str | None = None, errors_only: bool = False) -> tuple[int, list[str]]:
        """Remove ``method``'s samples (of configurations whose hash starts with ``config``; only error rows with
        ``errors_only``) with their values and routing, its set values (stale now), and the registration of
        configurations left without samples. Returns (samples removed, their stored PNG paths: the caller deletes
        them through ``contained``)."""
        samples = self.samples()
        drop = samples[samples.method == method]
        if config:
            drop = drop[drop.method_config.str.startswith(config)]
        if errors_only:
            drop = drop[drop.status == "error"]
        n = self.delete_samples(drop.sample_key)
        remaining = set(self.samples().query("method == @method").method_config)
        with self._transaction():
            self.conn.execute("DELETE FROM set_values WHERE method = ?", (method,))
            for c in set(drop.method_config) - remaining:
                self.conn.execute("DELETE FROM methods WHERE method = ? AND method_config = ?", (method, c))
        return n, [p for p in drop.output_path if isinstance(p, str)]

    def delete_method(self, method: str, method_config: str) -> None:
        """Remove a method configuration's registration and set values (its samples: ``delete_samples``)."""
        with self._transaction():
            self.conn.execute("DELETE FROM methods WHERE method = ? AND method_config = ?", (method, method_config))
            self.conn.execute("DELETE FROM set_values WHERE method = ? AND method_config = ?", (method, method_config))

    def _transaction(self):
        return _Transaction(self.conn)

    # ------------------------------------------------------------------------------------------ migration
    def _schema_version(self) -> int:
        return self._stored_version() or SCHEMA_VERSION

    def _legacy_methods(self) -> list[tuple[str, str, dict[str, Any]]]:
        """``(method, config, info)`` of the schema-1 rows whose ``params`` hold provenance next to a weights
        ``*sha256`` (the digest identifies the weights, so the path is redundant; without one, a path may be all
        that tells two models apart and the row is left as it is)."""
        rows = []
        for method, config, text in self.conn.execute("SELECT method, method_config, info FROM methods"):
            info = json.loads(text)
            params = info.get("params", {})
            if (info.get("version") != IMPORTED_VERSION and any(k in params for k in LEGACY_PROVENANCE)
                    and any(k.endswith("sha256") for k in params)):
                rows.append((method, config, info))
        return rows

    def _migrate_provenance(self) -> None:
        """Schema 1 → 2: move ``checkpoint`` and ``reproduce`` out of stored method ``params`` into ``provenance``
        and rehash: ``methods``, ``samples`` (key and config), ``metric_values``, ``routing`` and ``set_values``
        take the new config hash and sample keys, in one transaction. Configurations that differed only in
        provenance (the same weights read from two folders) become one; per new sample key the most recent sample
        is kept (an ok one before an error) and the others are deleted with their values and routing. PNG files
        stay where they are. Set values keep their old ``samples_hash``, so the next run with those metrics
        recomputes them. Runs once per store: a schema-2 store is not scanned again, so a third-party method that
        does keep a ``checkpoint`` parameter is never rehashed behind its back."""
        if self._schema_version() >= 2:
            return
        known = {f.name for f in fields(MethodInfo)}
        with self._transaction():
            if self._schema_version() >= 2:  # another process migrated it meanwhile
                return
            legacy = self._legacy_methods()
            groups: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
            for method, config, info in legacy:
                params = {k: v for k, v in info["params"].items() if k not in LEGACY_PROVENANCE}
                moved = {k: info["params"][k] for k in LEGACY_PROVENANCE if k in info["params"]}
                new = info | {"params": params, "provenance": moved | info.get("provenance", {})}
                new_config = MethodInfo(**{k: v for k, v in new.items() if k in known}).config_hash
                groups.setdefault((method, new_config), []).append((config, new))
            merged = dropped = 0
            for (method, new_config), olds in groups.items():
                m, d = self._rehash_group(method, new_config, olds)
                merged, dropped = merged + m, dropped + d
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('migrated_provenance', ?)",
                              (str(len(legacy)),))
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '2')")
        if legacy:
            log.info("%s: moved checkpoint paths and reproduce commands out of method parameters: %d configuration(s) "
                     "rehashed, %d merged into one with the same weights, %d duplicate sample(s) dropped",
                     self.path, len(legacy), merged, dropped)

    def _rehash_group(self, method: str, new_config: str, olds: list[tuple[str, dict[str, Any]]]) -> tuple[int, int]:
        """Move the legacy configurations ``olds`` (``(old config, new info)``) of ``method`` onto ``new_config``,
        inside the caller's transaction; returns (configurations merged into another, samples dropped)."""
        cols = ("sample_key, method_config, protocol, protocol_version, pair_id, content_id, style_id, seed, status, "
                "created")
        configs = [c for c, _ in olds] + [new_config]  # new_config: rows another process already wrote under it
        marks = ", ".join("?" * len(configs))
        rows = self.conn.execute(f"SELECT {cols} FROM samples WHERE method = ? AND method_config IN ({marks})",
                                 [method, *configs]).fetchall()
        by_key: dict[str, list[tuple]] = {}
        for r in rows:
            by_key.setdefault(sample_key_of(new_config, *r[2:8]), []).append(r)
        keep, drop = {}, []
        for new_key, rs in by_key.items():
            rs.sort(key=lambda r: (r[8] == "ok", r[9]), reverse=True)  # ok first, then the most recent
            keep[new_key] = rs[0]
            drop += [r[0] for r in rs[1:]]
        # the configuration whose info (provenance) and set values survive: already migrated, else the newest samples
        newest = {c: max((r[9] for r in rows if r[1] == c), default=float("-inf")) for c in configs}
        exists = self.conn.execute("SELECT 1 FROM methods WHERE method = ? AND method_config = ?",
                                   (method, new_config)).fetchone() is not None
        winner = new_config if exists else max((c for c, _ in olds), key=lambda c: newest[c])
        for i in range(0, len(drop), 500):
            chunk = drop[i : i + 500]
            q = ", ".join("?" * len(chunk))
            for table in ("metric_values", "routing", "samples"):
                self.conn.execute(f"DELETE FROM {table} WHERE sample_key IN ({q})", chunk)
        moves = [(new_key, r[0]) for new_key, r in keep.items() if r[0] != new_key]
        self.conn.executemany("UPDATE samples SET sample_key = ?, method_config = ? WHERE sample_key = ?",
                              [(k, new_config, old) for k, old in moves])
        for table in ("metric_values", "routing"):
            self.conn.executemany(f"UPDATE {table} SET sample_key = ? WHERE sample_key = ?", moves)
        for config, info in olds:
            self.conn.execute("DELETE FROM methods WHERE method = ? AND method_config = ?", (method, config))
            if config == winner:
                self.conn.execute("INSERT INTO methods (method, method_config, info) VALUES (?, ?, ?)",
                                  (method, new_config, json.dumps(info)))
                self.conn.execute("UPDATE set_values SET method_config = ? WHERE method = ? AND method_config = ?",
                                  (new_config, method, config))
            else:
                self.conn.execute("DELETE FROM set_values WHERE method = ? AND method_config = ?", (method, config))
        return len(olds) - (winner != new_config), len(drop)

    def _migrate_setup(self) -> None:
        """Schema 2 → 3: samples gain ``setup`` and ``resolution`` (``''`` and 0: unknown until the runner proves
        them, ``sxbench.runner.reconcile``), metric values gain ``weights``. One transaction; nothing is rewritten."""
        def change() -> None:
            self._add_columns("samples", (("setup", "TEXT NOT NULL DEFAULT ''"),
                                          ("resolution", "INTEGER NOT NULL DEFAULT 0")))
            self._add_columns("metric_values", (("weights", "TEXT"),))

        self._schema_step(3, change, "samples record their protocol setup")

    def _migrate_set_intervals(self) -> None:
        """Schema 3 → 4: ``set_values`` gains the interval columns (``_SET_EXTRA``), NULL for the rows it holds;
        the rows of renamed set metrics go (the next run computes them under the new name)."""
        def change() -> None:
            self._add_columns("set_values", _SET_EXTRA)
            for old in RENAMED_SET_METRICS:
                self.conn.execute("DELETE FROM set_values WHERE metric = ?", (old,))

        self._schema_step(4, change, "set values with intervals")

    def _schema_step(self, version: int, change: Any, what: str) -> None:
        """Run ``change()`` and record schema ``version``, in one transaction, unless the store is at ``version``
        already (checked again inside the transaction: another process may have migrated it meanwhile)."""
        if self._schema_version() >= version:
            return
        with self._transaction():
            if self._schema_version() >= version:
                return
            change()
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(version),))
        log.info("%s: store migrated to schema %d (%s)", self.path, version, what)

    def _add_columns(self, table: str, columns: Iterable[tuple[str, str]]) -> None:
        """``ALTER TABLE table ADD COLUMN`` each ``(name, declaration)`` the table lacks."""
        have = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
        for name, decl in columns:
            if name not in have:
                self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")

    # -------------------------------------------------------------------------------------------- reads
    def write_set_value(self, method: str, method_config: str, info: MetricInfo, subset: str, value: float | None,
                        n: int, samples_hash: str, *, ci_low: float | None = None, ci_high: float | None = None,
                        std: float | None = None, n_ref: int | None = None, replicates: Any = None,
                        boot: str | None = None) -> None:
        """One set metric value (replacing an older one for the same method, metric and subset), with its 95%
        interval, its own spread, its number of distinct references and its bootstrap replicates (stored as float64
        bytes, read back by ``set_replicates``) and the draws that made them (``boot``)."""
        blob = None if replicates is None else np.asarray(replicates, dtype="<f8").tobytes()
        self.conn.execute(
            "INSERT OR REPLACE INTO set_values (method, method_config, metric, subset, value, n, samples_hash, "
            "version, backbone, metric_group, higher_is_better, computed, ci_low, ci_high, std, n_ref, replicates, "
            "boot) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (method, method_config, info.name, subset, value, n, samples_hash, info.version, info.backbone, info.group,
             int(info.higher_is_better), time.time(), ci_low, ci_high, std, n_ref, blob, boot),
        )

    def set_hashes(self) -> dict[tuple[str, str, str, str], tuple[str, str]]:
        """``(method, config, metric, subset) → (samples_hash, version)`` of stored set values."""
        rows = self.conn.execute("SELECT method, method_config, metric, subset, samples_hash, version FROM set_values")
        return {(r[0], r[1], r[2], r[3]): (r[4], r[5]) for r in rows}

    def set_values(self) -> pd.DataFrame:
        """Every set value and expert statistic, without the replicates (``set_replicates``)."""
        cols = [r[1] for r in self.conn.execute("PRAGMA table_info(set_values)") if r[1] != "replicates"]
        return pd.read_sql_query(f"SELECT {', '.join(cols)} FROM set_values", self.conn)

    def set_replicates(self) -> dict[tuple[str, str, str, str], np.ndarray]:
        """``(method, config, metric, subset) → (B,)`` bootstrap replicates of the set values that have them."""
        rows = self.conn.execute("SELECT method, method_config, metric, subset, replicates FROM set_values "
                                 "WHERE replicates IS NOT NULL")
        return {(r[0], r[1], r[2], r[3]): np.frombuffer(r[4], dtype="<f8") for r in rows}

    def sample_status(self, keys: Iterable[str]) -> dict[str, str]:
        """``{sample_key: status}`` for those of ``keys`` already stored."""
        return sample_status(self.conn, keys)

    def scored_metrics(self, keys: Iterable[str]) -> dict[str, set[str]]:
        """``{sample_key: {metric names with a stored value}}``."""
        keys = list(keys)
        out: dict[str, set[str]] = {k: set() for k in keys}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT sample_key, metric FROM metric_values WHERE sample_key IN ({', '.join('?' * len(chunk))})"
            for key, metric in self.conn.execute(q, chunk):
                out[key].add(metric)
        return out

    def scored(self, keys: Iterable[str]) -> dict[str, dict[str, tuple[bool, str | None, str]]]:
        """``{sample_key: {metric: (failed, weights sha256, metric version)}}`` of the stored values (``failed``:
        stored ``NULL``)."""
        keys = list(keys)
        out: dict[str, dict[str, tuple[bool, str | None, str]]] = {k: {} for k in keys}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = ("SELECT sample_key, metric, value IS NULL, weights, version FROM metric_values "
                 f"WHERE sample_key IN ({', '.join('?' * len(chunk))})")
            for key, metric, failed, weights, version in self.conn.execute(q, chunk):
                out[key][metric] = (bool(failed), weights, str(version))
        return out

    def samples_of(self, method: str, method_config: str, protocol: str) -> pd.DataFrame:
        """The samples of one method configuration under ``protocol``, with the config of the run that made each
        (``run_config``, a dict: its resolution, resize policy and options prove a legacy sample's setup)."""
        rows = pd.read_sql_query(
            """SELECT s.sample_key, s.pair_id, s.content_id, s.style_id, s.seed, s.protocol_version, s.setup, s.status,
                      s.output_path, r.config AS run_config
               FROM samples s LEFT JOIN runs r USING (run_id)
               WHERE s.method = ? AND s.method_config = ? AND s.protocol = ?""",
            self.conn, params=(method, method_config, protocol))
        rows["run_config"] = [json.loads(c) if isinstance(c, str) else {} for c in rows.run_config]
        return rows

    def rekey(self, moves: Iterable[tuple[str, str, str, int]]) -> int:
        """Move samples ``(old key, new key, setup, resolution)`` onto their full keys, with their values and
        routing, in one transaction (an old key whose new key is already stored is dropped instead)."""
        n = 0
        with self._transaction():
            for old, new, setup, resolution in moves:
                if self.conn.execute("SELECT 1 FROM samples WHERE sample_key = ?", (new,)).fetchone():
                    for table in ("metric_values", "routing", "samples"):
                        self.conn.execute(f"DELETE FROM {table} WHERE sample_key = ?", (old,))
                    continue
                self.conn.execute("UPDATE samples SET sample_key = ?, setup = ?, resolution = ? WHERE sample_key = ?",
                                  (new, setup, resolution, old))
                for table in ("metric_values", "routing"):
                    self.conn.execute(f"UPDATE {table} SET sample_key = ? WHERE sample_key = ?", (new, old))
                n += 1
        return n

    def close_stale_runs(self) -> int:
        """Mark runs still ``running`` as ``killed``: called by the holder of the run folder's lock
        (``sxbench.lock``), so no process of theirs is alive (kill -9, power loss)."""
        return self.conn.execute("UPDATE runs SET status = 'killed' WHERE status = 'running'").rowcount

    def routing(self) -> pd.DataFrame:
        """Long format: one row per (sample, layer, slot) with the sample's labels joined in."""
        return pd.read_sql_query(
            """SELECT s.method, s.method_config, s.split, s.level, s.family, s.style_id, s.pair_id, s.seed,
                      r.layer, r.slot, r.expert, r.weight, r.num_experts, r.sample_key
               FROM routing r JOIN samples s USING (sample_key) ORDER BY s.method, r.sample_key, r.layer, r.slot""",
            self.conn,
        )

    def runs(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM runs ORDER BY started", self.conn)

    def methods(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(m, c): json.loads(i) for m, c, i in self.conn.execute("SELECT * FROM methods")}

    def metrics(self) -> dict[str, dict[str, Any]]:
        return {m: json.loads(i) for m, _, i in self.conn.execute("SELECT * FROM metrics ORDER BY metric, version")}

    def samples(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM samples", self.conn)

    def values(self) -> pd.DataFrame:
        """Long format: one row per (sample, metric) with the sample's labels joined in."""
        return pd.read_sql_query(
            """SELECT s.method, s.method_config, s.protocol, s.protocol_version, s.split, s.level, s.family,
                      s.pair_id, s.content_id, s.style_id, s.seed, v.metric, v.value, v.higher_is_better,
                      v.metric_group, v.version AS metric_version, v.backbone, v.weights, s.sample_key, s.output_path
               FROM metric_values v JOIN samples s USING (sample_key)
               ORDER BY s.method, s.pair_id, s.seed, v.metric""",
            self.conn,
        ).astype({"higher_is_better": bool, "value": float})  # NULL (a failed metric) → NaN


def sample_status(conn: sqlite3.Connection, keys: Iterable[str]) -> dict[str, str]:
    """``{sample_key: status}`` for those of ``keys`` stored in ``conn``'s ``samples`` (500 keys a query)."""
    keys = list(keys)
    out: dict[str, str] = {}
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        q = f"SELECT sample_key, status FROM samples WHERE sample_key IN ({', '.join('?' * len(chunk))})"
        out.update(dict(conn.execute(q, chunk).fetchall()))
    return out


def read_only(run_dir: str | Path) -> sqlite3.Connection:
    """A read-only connection to ``run_dir``'s store (no migration, no lock: another process may be its writer);
    close it after use (``contextlib.closing``)."""
    uri = (Path(run_dir) / DB_NAME).resolve().as_uri() + "?mode=ro"  # any characters in the path, percent-encoded
    return sqlite3.connect(uri, uri=True, timeout=60)


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *_: Any) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
