"""The runner: methods × pairs × seeds, batched, stored, scored; resumable after any crash.

The runner is a producer: it makes outputs and hands them to the run's ``sxbench.evaluation.Evaluator``, which
owns every score (``sxbench import`` is the other producer). Stages, each restartable:

1. generate: for every (method, pair, seed) without a stored sample, run the method in batches, write the
   PNG (atomically), score it (``Evaluator.score``), and commit sample plus values in one transaction;
2. evaluate the rest (``Evaluator.finish``): samples stored earlier but missing a metric are scored from their
   PNGs, then set metrics and expert statistics.

The CLI renders the report afterwards (``sxbench.report.render``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from sxbench import registry
from sxbench.evaluation import Evaluator, Item, chunks
from sxbench.imageio import to_pil
from sxbench.interfaces import Method, PairSpec, Protocol, ProtocolSpec
from sxbench.lock import run_lock
from sxbench.records import MethodInfo, SampleRecord, sample_key_of, stable_hash
from sxbench.store import DB_NAME, Store, UnsafePathError
from sxbench.subsets import stratified_subset
from sxbench.store import contained as contained_path

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("identity", "stylecopy", "reinhard", "histmatch", "magenta", "adain", "styleexpert",
                   "styleexpert-lora", "styleexpert-noprior")
"""Methods of a run without ``--methods``; names not registered in this installation are skipped, and methods
whose weights are missing are reported and skipped (``gatys``, an optimisation per image, is opt-in)."""

KILL_AFTER_SAMPLES_ENV = "SXBENCH_KILL_AFTER_SAMPLES"
"""Test hook, not a user setting: with ``N`` (a positive integer) in this environment variable, the process sends
itself SIGKILL right after the transaction of the ``N``-th sample it stores is committed, so a test can kill a run
at an exact point (tests/test_cli.py) instead of racing a timer."""

PAUSE_AFTER_SAMPLES_ENV = "SXBENCH_PAUSE_AFTER_SAMPLES"
"""Test hook, not a user setting: with ``N`` here, the process sleeps (up to ten minutes) right after the ``N``-th
sample it stores is committed, so a test's signal (Ctrl-C, SIGTERM) provably lands mid-run instead of racing a run
that may finish first on a loaded machine (tests/test_faults.py)."""

PAUSE_SECONDS = 600.0


def _after_samples(env: str) -> int | None:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{env}={raw!r}: expected a positive integer (a test hook); unset it")
    return int(raw)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; recorded whole in the store."""

    protocol: str
    """Protocol registry name."""
    methods: tuple[str, ...] = DEFAULT_METHODS
    """Method registry names."""
    out: Path | None = None
    """Run folder; default ``reports/<protocol>``."""
    protocol_args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the protocol factory (e.g. ``root`` for ``folder``)."""
    method_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per method name, constructor keyword arguments."""
    seeds: tuple[int, ...] | None = None
    """Seeds; default the protocol's."""
    limit: int | None = None
    """A deterministic stratified subset of ``limit`` pairs, every level and split represented
    (``sxbench.subsets.stratified_subset``)."""
    metrics: tuple[str, ...] | None = None
    """Metric names; default the protocol's."""
    device: str = "cpu"
    """Device methods run on."""
    batch_size: int = 8
    """Samples per ``stylize_batch`` call."""
    progress: bool = True
    """Show progress bars."""
    retry_failed: bool = False
    """Re-run samples stored as errors (by default an error row counts as done)."""
    weights_dir: str | None = None
    """Pretrained weights folder (``sxbench.weights``); default ``$SXBENCH_WEIGHTS`` or the user cache."""
    shard: tuple[int, int] | None = None
    """``(i, n)``: generate only every n-th sample of each method, from the i-th (``--shard i/n``; the ranks of a
    distributed run); ``sxbench merge`` brings the shards' folders together."""
    done_in: Path | None = None
    """Another run folder whose stored samples count as done (a distributed rank reads its run's main folder)."""
    finish: bool = True
    """Compute set metrics and expert statistics at the end (a shard leaves them to the merge)."""

    @property
    def run_dir(self) -> Path:
        return Path(self.out) if self.out is not None else Path("reports") / self.protocol


@dataclass(frozen=True)
class RunSummary:
    """What a run did."""

    run_dir: Path
    """Run folder."""
    generated: int
    """Samples produced in this invocation."""
    skipped: int
    """Samples already stored and not recomputed."""
    failed: int
    """Samples recorded as errors in this invocation."""
    rescored: int
    """Stored samples that received missing metric values."""
    skipped_metrics: dict[str, str]
    """Metric name → reason it was not computed."""
    failed_methods: dict[str, str]
    """Method name → reason it could not be created."""
    input_errors: tuple[str, ...]
    """One line per unusable input file."""


def sample_key(method_config: str, spec: ProtocolSpec, pair: PairSpec, seed: int) -> str:
    """Content hash of (method config, protocol, pair, seed, setup: resolution, resize policy, options, input
    bytes): the sample's key and PNG stem (``sxbench.records.sample_key_of``)."""
    return sample_key_of(method_config, spec.name, spec.version, pair.pair_id, pair.content_id, pair.style_id, seed,
                         spec.setup(pair))


def provenance(device: str) -> dict[str, Any]:
    """Versions and hardware, for the report."""
    import importlib.metadata as md

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "packages": {p: version(p) for p in ("sxbench", "torch", "torchvision", "numpy", "scikit-image", "torchmetrics", "diffusers", "pillow")},
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


class _Meter:
    """Wall-clock and peak memory of one batch."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def __enter__(self) -> "_Meter":
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak, self.kind = int(torch.cuda.max_memory_allocated(self.device)), "cuda_allocated"
        else:  # ru_maxrss is KiB on Linux, bytes on macOS
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak, self.kind = int(rss if sys.platform == "darwin" else rss * 1024), "cpu_rss"
        self.seconds = time.perf_counter() - self.t0


class Runner:
    """Runs one ``RunConfig``; see the module docstring for the stages."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.run_dir = config.run_dir
        self.protocol, self.pairs, self.seeds, self.evaluator = prepare(config)
        self.skipped_metrics = self.evaluator.skipped
        self._kill_after = _after_samples(KILL_AFTER_SAMPLES_ENV)
        self._pause_after = _after_samples(PAUSE_AFTER_SAMPLES_ENV)
        self._committed = 0

    # ------------------------------------------------------------------------------------------ helpers
    def _inputs(self, pair: PairSpec) -> tuple[Image.Image, Image.Image]:
        return self.protocol.content(pair.content_id), self.protocol.style(pair.style_id)

    def _write_png(self, im: Image.Image, rel: str) -> None:
        write_png(im, self.run_dir / rel)

    def _save_inputs(self) -> None:
        save_inputs(self.protocol, self.pairs, self.run_dir)

    # -------------------------------------------------------------------------------------------- stages
    def run(self) -> RunSummary:
        with run_lock(self.run_dir):
            store = Store(self.run_dir)
            try:
                return self._run(store)
            finally:
                store.close()

    def _run(self, store: Store) -> RunSummary:
        cfg, spec = self.config, self.protocol.spec
        killed = store.close_stale_runs()
        if killed:
            log.info("%d earlier run(s) of %s were killed before they finished; marked `killed`, their finished "
                     "samples are kept", killed, self.run_dir)
        prov = provenance(cfg.device) | {"input_errors": list(self.protocol.input_errors),
                                          "skipped_metrics": dict(self.skipped_metrics)}
        config = run_record(spec, self.seeds, cfg.limit, len(self.pairs), cfg.methods, self.evaluator) | {
            "method_args": cfg.method_args, "device": cfg.device, "batch_size": cfg.batch_size,
            "retry_failed": cfg.retry_failed, "protocol_name": cfg.protocol, "protocol_args": cfg.protocol_args,
            **({"shard": list(cfg.shard)} if cfg.shard else {})}
        run_id = store.begin_run(spec.name, config, prov)
        with closing_run(store, run_id, prov):
            remove_stale_temporaries(self.run_dir)
            self.evaluator.register(store)
            self._save_inputs()
            generated = skipped = failed = 0
            failed_methods: dict[str, str] = {}
            for name in cfg.methods:
                try:
                    log.info("%s: loading", name)
                    method = registry.create_method(name, device=cfg.device,
                                                    **{**_weights_kwargs(name, cfg), **cfg.method_args.get(name, {})})
                except registry.UnknownNameError:
                    raise
                except Exception as exc:
                    failed_methods[name] = f"{type(exc).__name__}: {exc}"
                    log.error("method %s could not be created, skipped: %s", name, failed_methods[name])
                    continue
                g, s, f = self._generate(store, run_id, method)
                generated, skipped, failed = generated + g, skipped + s, failed + f
            if cfg.finish:
                rescored = self.evaluator.finish(store, self.run_dir, cfg.methods, retry_failed=cfg.retry_failed)
            else:  # a shard: its own samples' values are complete; the sets come with the merge
                rescored = self.evaluator.complete(store, self.run_dir, cfg.retry_failed)
            prov |= {"failed_methods": failed_methods}
        return RunSummary(self.run_dir, generated, skipped, failed, rescored, dict(self.skipped_metrics),
                          failed_methods, tuple(self.protocol.input_errors))

    def _generate(self, store: Store, run_id: str, method: Method) -> tuple[int, int, int]:
        cfg, spec = self.config, self.protocol.spec
        info = method.info
        store.register_method(info)
        work = [(p, s, sample_key(info.config_hash, spec, p, s)) for p in self.pairs for s in self.seeds]
        if cfg.shard is not None:  # every n-th sample from the i-th, counted across the methods in their order:
            i, n = cfg.shard       # deterministic, even between shards, spread over levels and splits
            offset = cfg.methods.index(info.name) * len(work) if info.name in cfg.methods else 0
            work = [w for j, w in enumerate(work) if (offset + j) % n == i]
        reconcile(store, self.run_dir, info, spec, work)
        status = store.sample_status(k for _, _, k in work)
        heal = unreadable_outputs(store, self.run_dir, [k for _, _, k in work if status.get(k) == "ok"])
        for k in heal:
            del status[k]
        if cfg.done_in is not None:  # a rank: what its run's main folder (and any other shard) holds is done too
            keys = [k for _, _, k in work]
            shards = Path(cfg.done_in) / "shards"
            mine = f"-of-{cfg.shard[1]}" if cfg.shard else None  # this run's other ranks hold other samples
            others = [Path(cfg.done_in)] + ([p for p in sorted(shards.iterdir()) if p.is_dir()
                                             and not p.name.startswith(".")  # merged, being deleted
                                             and not (mine and p.name.endswith(mine))] if shards.is_dir() else [])
            for folder in others:
                for k, v in stored_status(folder, keys).items():
                    if v == "ok" or k not in status:  # an output anywhere beats an error row
                        status[k] = v
        todo = [w for w in work if w[2] not in status or (cfg.retry_failed and status[w[2]] == "error")]
        skipped, failed = len(work) - len(todo), 0
        if skipped:
            log.info("%s: %d of %d samples already stored, skipping them", info.name, skipped, len(work))
        bar = tqdm(total=len(todo), desc=info.name, unit="img", disable=not cfg.progress or not todo, leave=True)
        for batch in chunks(todo, max(1, cfg.batch_size)):
            results = self._stylize(method, batch)
            ok = [Item(w[2], w[0], r[0]) for w, r in zip(batch, results) if isinstance(r[0], Image.Image)]
            values = self.evaluator.score(ok)
            for (pair, seed, key), (out, seconds, n, meter, routing) in zip(batch, results):
                is_ok = isinstance(out, Image.Image)
                rel = f"images/{info.name}/{key}.png" if is_ok else None
                if is_ok:
                    self._write_png(out, rel)
                else:
                    failed += 1
                    log.warning("%s failed on pair %s seed %d: %s", info.name, pair.pair_id, seed, out)
                record = SampleRecord(
                    sample_key=key, run_id=run_id, method=info.name, method_config=info.config_hash,
                    protocol=spec.name, protocol_version=spec.version, pair_id=pair.pair_id,
                    content_id=pair.content_id, style_id=pair.style_id, seed=seed, split=pair.split,
                    level=pair.level, family=pair.family, status="ok" if is_ok else "error",
                    error=None if is_ok else str(out), output_path=rel, latency_s=seconds / n, batch_size=n,
                    peak_memory_bytes=meter.peak, memory_kind=meter.kind, device=str(method.device),
                    setup=spec.setup(pair), resolution=spec.resolution,
                )
                store.write_sample(record, values.get(key, []), routing if is_ok else ())
                self._committed += 1
                if self._kill_after is not None and self._committed >= self._kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)  # the test hook: committed, then killed like `kill -9`
                if self._pause_after is not None and self._committed == self._pause_after:
                    time.sleep(PAUSE_SECONDS)  # the test hook: committed, then waits for the test's signal
            bar.update(len(batch))
        bar.close()
        return len(todo) - failed, skipped, failed

    def _stylize(self, method: Method, batch: Sequence[tuple[PairSpec, int, str]]) -> list[tuple[Any, float, int, _Meter, list]]:
        """Run one batch; on an exception retry sample by sample so one bad pair fails alone.

        Returns per sample ``(PIL image or error message, batch seconds, batch size, meter, routing rows)``.
        """
        try:
            contents, styles = zip(*[self._inputs(p) for p, _, _ in batch])
            with _Meter(method.device) as meter:
                outputs = method.stylize_batch(list(contents), list(styles), seeds=[s for _, s, _ in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"returned {len(outputs)} outputs for a batch of {len(batch)}")
            routing = method.routing()
        except Exception as exc:
            if len(batch) == 1:
                m = _Meter(method.device)
                m.__enter__(), m.__exit__()
                return [(f"{type(exc).__name__}: {exc}", 0.0, 1, m, [])]
            return [r for item in batch for r in self._stylize(method, [item])]
        results = []
        size = self.protocol.spec.resolution
        for j, o in enumerate(outputs):
            rows = [] if routing is None else [
                (layer, slot, int(routing.indices[layer][j, slot]), float(routing.weights[layer][j, slot]), routing.num_experts)
                for layer in routing.indices for slot in range(routing.indices[layer].shape[1])]
            try:
                im = to_pil(o)
                if im.size != (size, size):  # never stored and scored after a silent resize
                    raise ValueError(f"output is {im.width}×{im.height}, the protocol's resolution is {size}×{size}")
                results.append((im, meter.seconds, len(batch), meter, rows))
            except ValueError as exc:
                results.append((f"invalid output: {exc}", meter.seconds, len(batch), meter, []))
        return results


def stored_status(run_dir: Path, keys: Sequence[str]) -> dict[str, str]:
    """``{sample key: status}`` of ``keys`` stored in ``run_dir``, read through a read-only connection (the
    ranks of a distributed run read their main folder at once; only rank 0 writes it, after them)."""
    import sqlite3

    from sxbench.store import read_only, sample_status

    path = run_dir / DB_NAME
    if not path.is_file():
        return {}
    try:
        with contextlib.closing(read_only(run_dir)) as con:
            return sample_status(con, keys)
    except sqlite3.Error as exc:  # a store killed as it was created: nothing there counts as done
        log.warning("%s: not read (%s); its samples are not counted as done", path, exc)
        return {}


def prepare(config: RunConfig) -> tuple[Protocol, Sequence[PairSpec], tuple[int, ...], Evaluator]:
    """What every producer (``Runner``, ``sxbench.imported.Importer``) starts from: the protocol, its pairs after
    ``limit``, the seeds and the run's evaluator."""
    protocol = registry.create_protocol(config.protocol, **({"seeds": config.seeds} if config.seeds else {}),
                                        **config.protocol_args)
    spec = protocol.spec
    pairs = stratified_subset(spec.pairs, config.limit) if config.limit else spec.pairs
    if not pairs:
        raise ValueError(f"protocol {spec.name!r} has no pairs to run" + (
            f": every pair uses one of the {len(protocol.input_errors)} unusable input file(s) named above; fix or "
            "remove them" if protocol.input_errors else ""))
    seeds = tuple(config.seeds or spec.seeds)
    evaluator = Evaluator(protocol, pairs, seeds, metrics=config.metrics, device=config.device,
                          weights_dir=config.weights_dir, run_dir=config.run_dir, progress=config.progress)
    return protocol, pairs, seeds, evaluator


def run_record(spec: Any, seeds: Sequence[int], limit: int | None, n_pairs: int, methods: Sequence[str],
               evaluator: Evaluator) -> dict[str, Any]:
    """What the store records of a run's configuration (``runs.config``), for both producers."""
    return {"protocol": spec.name, "protocol_version": spec.version, "protocol_params": spec.params,
            "resolution": spec.resolution, "resize_policy": spec.resize_policy, "seeds": list(seeds), "limit": limit,
            "methods": list(methods), "metrics": [m.info.name for m in evaluator.metrics], "n_pairs": n_pairs,
            "argv": sys.argv}


def write_png(im: Image.Image, path: Path) -> None:
    """Write ``im`` to ``path`` atomically: a temporary file of this process in the same folder, then a rename
    (two processes writing the same path never share a temporary name)."""
    atomic_write(path, lambda fh: im.save(fh, format="PNG"))


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Call ``write(binary file)`` on a fresh temporary file beside ``path``, then move it onto ``path``; on any
    error the temporary file is removed and ``path`` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


TEMPORARY_GLOB = ".*.tmp"
"""``atomic_write``'s temporary names (``.<target name>.<random>.tmp``)."""


def remove_stale_temporaries(run_dir: Path) -> int:
    """Remove temporary files a killed writer left in the run folder. Called by the holder of the run folder's
    lock, so no writer of them is alive (``sxbench report`` takes no lock, but writes only ``index.html`` and
    ``figures/``, which are left alone)."""
    n = 0
    for sub in ("images", "inputs", "cache"):
        for tmp in (run_dir / sub).rglob(TEMPORARY_GLOB):
            tmp.unlink(missing_ok=True)
            n += 1
    if n:
        log.info("removed %d temporary files left by an interrupted write", n)
    return n


@contextmanager
def closing_run(store: Store, run_id: str, prov: dict[str, Any]) -> Iterator[None]:
    """Close the run's row however the block ends: ``finished``, ``interrupted`` (Ctrl-C, SIGTERM) or ``failed``
    (the error propagates; the CLI prints it on one line). Finished samples are committed already."""
    try:
        yield
    except KeyboardInterrupt:
        store.finish_run(run_id, prov, status="interrupted")
        raise
    except BaseException as exc:
        store.finish_run(run_id, prov | {"error": f"{type(exc).__name__}: {exc}"}, status="failed")
        raise
    store.finish_run(run_id, prov)


def reconcile(store: Store, run_dir: Path, info: MethodInfo, spec: ProtocolSpec,
              work: Sequence[tuple[PairSpec, int, str]]) -> None:
    """Before generating ``work`` (``(pair, seed, key)``) of one method configuration: a stored sample of the same
    (pair, seed) under another key was made with another setup (resolution, resize policy, options, input bytes).
    A sample from before schema 3 (``setup == ''``) whose run recorded this very setup moves onto the new key
    (nothing is regenerated); any other is removed with its PNG, so the new setup's output replaces it and the
    store never holds two setups of one cell."""
    current = {(p.pair_id, int(s)): (k, spec.setup(p)) for p, s, k in work}
    rows = store.samples_of(info.name, info.config_hash, spec.name)
    moves, stale = [], []
    for r in rows.itertuples():
        key, setup = current.get((r.pair_id, int(r.seed)), (None, None))
        if key is None or key == r.sample_key:
            continue
        legacy = r.setup == "" and r.protocol_version == spec.version
        if legacy and _legacy_setup(r.run_config, r.pair_id, spec) == setup:
            moves.append((r.sample_key, key, setup, spec.resolution))
        else:
            stale.append(r)
    if moves:
        store.rekey(moves)
        log.info("%s: %d samples stored before setups were recorded matched this run's and were kept", info.name,
                 len(moves))
    if stale:
        store.delete_samples(r.sample_key for r in stale)  # rows first: a crash leaves stray files, not dangling rows
        for r in stale:
            remove_output(run_dir, r.output_path)
        log.warning("%s: %d stored samples were made with another setup (resolution, resize policy, options or input "
                    "files changed); they are generated again", info.name, len(stale))


def _legacy_setup(run_config: dict[str, Any], pair_id: str, spec: ProtocolSpec) -> str | None:
    """The setup a pre-schema-3 sample was made with, from its run's record; ``None`` when it cannot be proven
    (a protocol that reads files: the bytes it read then are unknown)."""
    pair = next((p for p in spec.pairs if p.pair_id == pair_id), None)
    if pair is None or pair.inputs or "resolution" not in run_config:
        return None
    old = ProtocolSpec(spec.name, run_config.get("protocol_version", ""), run_config["resolution"], (),
                       resize_policy=run_config.get("resize_policy", "crop"),
                       params=run_config.get("protocol_params") or {})
    return old.setup(pair)


def remove_output(run_dir: Path, rel: str | None) -> None:
    """Delete a stored PNG named by the database, only inside the run folder."""
    if not rel or not isinstance(rel, str):
        return
    try:
        contained_path(run_dir, rel).unlink(missing_ok=True)
    except UnsafePathError as exc:
        log.warning("%s; not deleted", exc)


def unreadable_outputs(store: Store, run_dir: Path, keys: Sequence[str]) -> list[str]:
    """Of the stored ``ok`` samples ``keys``, those whose PNG is missing, damaged or outside the run folder: their
    rows are removed (logged), so they are generated again. A quick check (PNG chunk CRCs, no decode)."""
    if not keys:
        return []
    samples = store.samples()
    paths = dict(zip(samples.sample_key, samples.output_path))
    bad: list[tuple[str, str]] = []
    for k in keys:
        why = png_problem(run_dir, paths.get(k))
        if why:
            bad.append((k, why))
    if bad:
        store.delete_samples(k for k, _ in bad)
        for k, _ in bad:
            remove_output(run_dir, paths.get(k))
        log.warning("%d stored outputs cannot be read and are generated again (first: %s)", len(bad), bad[0][1])
    return [k for k, _ in bad]


def png_problem(run_dir: Path, rel: str | None) -> str | None:
    """Why a stored output cannot be used, or ``None``."""
    if not rel:
        return "no output path stored"
    try:
        path = contained_path(run_dir, rel)
        with Image.open(path) as im:
            im.verify()
    except UnsafePathError as exc:
        return str(exc)
    except FileNotFoundError:
        return f"{run_dir / rel}: missing"
    except Exception as exc:  # PIL raises many kinds for damaged files
        return f"{run_dir / rel}: damaged ({type(exc).__name__}: {exc})"
    return None


def input_paths(pair_id: str, content_id: str, style_id: str) -> tuple[str, str, str]:
    """The relative paths a pair's inputs are stored under (``inputs/…``): content, style, target."""
    return (f"inputs/content/{stable_hash(content_id, 16)}.png", f"inputs/style/{stable_hash(style_id, 16)}.png",
            f"inputs/target/{stable_hash(pair_id, 16)}.png")


def save_inputs(protocol: Protocol, pairs: Sequence[PairSpec], run_dir: Path) -> None:
    """Every pair's inputs (content, style, and target where the protocol has one) as PNGs under
    ``run_dir/inputs``, each image once however many pairs share it: the report's grid and its sample explorer
    show them beside the outputs. Rewritten when their pixels changed (another resolution, an edited input file)."""
    done: set[str] = set()
    for pair in pairs:
        paths = input_paths(pair.pair_id, pair.content_id, pair.style_id)
        for rel, get in zip(paths, (lambda: protocol.content(pair.content_id), lambda: protocol.style(pair.style_id),
                                    lambda: protocol.target(pair.pair_id) if pair.has_target else None)):
            path = run_dir / rel
            if str(path) in done:
                continue
            done.add(str(path))
            im = get()
            if im is not None and not _same_pixels(path, im):
                write_png(im, path)


def _same_pixels(path: Path, im: Image.Image) -> bool:
    try:
        with Image.open(path) as old:
            return old.size == im.size and old.convert("RGB").tobytes() == im.convert("RGB").tobytes()
    except Exception:  # missing or damaged: write it
        return False


def run(config: RunConfig) -> RunSummary:
    """Run, store and score ``config`` (the report is rendered by the caller: ``sxbench.report.render``)."""
    return Runner(config).run()


def _weights_kwargs(name: str, cfg: "RunConfig") -> dict[str, Any]:
    """``{"weights_dir": ...}`` for methods that load registry weights (``Method.takes_weights_dir``)."""
    if cfg.weights_dir is None or not getattr(registry.methods.get(name), "takes_weights_dir", False):
        return {}
    return {"weights_dir": cfg.weights_dir}
