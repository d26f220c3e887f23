"""The runner: methods × pairs × seeds, batched, stored, scored; resumable after any crash.

Stages, each restartable:

1. generate: for every (method, pair, seed) without a stored sample, run the method in batches, write the
   PNG (atomically), score it, and commit sample plus values in one transaction;
2. complete scores: samples stored earlier but missing a metric (a metric added later) are scored from
   their PNGs;
3. report: ``sxbench.report.render`` rebuilds ``index.html`` from the store.
"""

from __future__ import annotations

import inspect
import logging
import os
import platform
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from sxbench import registry
from sxbench.backbones.models import FeatureCache
from sxbench.imageio import load_image, to_pil, to_tensor
from sxbench.interfaces import ImageMetric, Method, PairSpec, Protocol
from sxbench.records import MetricValue, SampleRecord, stable_hash
from sxbench.store import Store
from sxbench.metrics.sets import SetMetric, is_set_metric
from sxbench.weights import WeightsMissingError

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("identity", "stylecopy", "reinhard", "histmatch", "magenta", "adain", "styleexpert",
                   "styleexpert-lora", "styleexpert-noprior")
"""Methods of a run without ``--methods``; names not registered in this installation are skipped, and methods
whose weights are missing are reported and skipped (``gatys``, an optimisation per image, is opt-in)."""

KILL_AFTER_SAMPLES_ENV = "SXBENCH_KILL_AFTER_SAMPLES"
"""Test hook, not a user setting: with ``N`` (a positive integer) in this environment variable, the process sends
itself SIGKILL right after the transaction of the ``N``-th sample it stores is committed, so a test can kill a run
at an exact point (tests/test_cli.py) instead of racing a timer."""


def _kill_after_samples() -> int | None:
    raw = os.environ.get(KILL_AFTER_SAMPLES_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{KILL_AFTER_SAMPLES_ENV}={raw!r}: expected a positive integer (a test hook); unset it")
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
    """Use only the first ``limit`` pairs."""
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


def sample_key(method_config: str, protocol: str, protocol_version: str, pair: PairSpec, seed: int) -> str:
    """Content hash of (method config, protocol, content, style, seed): the sample's key and PNG stem."""
    return stable_hash([method_config, protocol, protocol_version, pair.pair_id, pair.content_id, pair.style_id, seed], 24)


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


def _chunks(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


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
        self.protocol: Protocol = registry.create_protocol(
            config.protocol, **({"seeds": config.seeds} if config.seeds else {}), **config.protocol_args
        )
        spec = self.protocol.spec
        self.pairs = spec.pairs[: config.limit] if config.limit else spec.pairs
        self.seeds = tuple(config.seeds or spec.seeds)
        self.skipped_metrics: dict[str, str] = {}
        self.metrics: list[ImageMetric] = []
        self.features = FeatureCache()
        self._kill_after = _kill_after_samples()
        self._committed = 0
        self.set_metrics: list[SetMetric] = []
        extra = {"device": config.device, "weights_dir": config.weights_dir, "cache": self.features}
        names = list(dict.fromkeys(config.metrics or spec.metrics))
        for name in list(names):
            if name not in registry.metrics and not config.metrics:  # a protocol default this install lacks
                self.skipped_metrics[name] = f"not run: metric {name!r} is not available in this installation"
                names.remove(name)
                continue
            dep = getattr(registry.metrics.get(name), "distance_metric", None)  # unknown explicit names fail here
            if dep and dep not in names:  # set metrics built on a per-image metric get it too (artfid)
                names.append(dep)
        for name in names:
            factory = registry.metrics.get(name)
            try:
                named = inspect.signature(factory).parameters  # explicit keywords only, not **kwargs
                metric = factory(**{k: v for k, v in extra.items() if k in named})
                (self.set_metrics if is_set_metric(factory) else self.metrics).append(metric)
            except WeightsMissingError:
                if config.metrics:  # asked for by name: fail now, before any work
                    raise
                self.skipped_metrics[name] = f"not run: {sys.exc_info()[1]}"
                log.warning("metric %s not run: weights missing (see `sxbench weights list`)", name)
            except Exception as exc:
                if config.metrics:
                    raise
                self.skipped_metrics[name] = f"not run: {type(exc).__name__}: {exc}"
                log.warning("metric %s skipped: %s", name, exc)

    # ------------------------------------------------------------------------------------------ helpers
    def _inputs(self, pair: PairSpec) -> tuple[Image.Image, Image.Image, Image.Image | None]:
        return (
            self.protocol.content(pair.content_id),
            self.protocol.style(pair.style_id),
            self.protocol.target(pair.pair_id) if pair.has_target else None,
        )

    def _score(self, outputs: list[Image.Image], pairs: Sequence[PairSpec], keys: Sequence[str],
               only: dict[str, set[str]] | None = None) -> dict[str, list[MetricValue]]:
        """Score outputs with every applicable metric; ``only[key]`` restricts which metrics per sample."""
        inputs = [self._inputs(p) for p in pairs]
        out: dict[str, list[MetricValue]] = {k: [] for k in keys}
        size = self.protocol.spec.resolution
        x = to_tensor([o if o.size == (size, size) else o.resize((size, size), Image.Resampling.LANCZOS) for o in outputs])
        content = to_tensor([i[0] for i in inputs])
        style = to_tensor([i[1].resize((size, size), Image.Resampling.LANCZOS) if i[1].size != (size, size) else i[1] for i in inputs])
        has_target = [i[2] is not None for i in inputs]
        wants_keys: dict[str, bool] = {}
        for m in self.metrics:
            info = m.info
            rows = [j for j, k in enumerate(keys) if (only is None or info.name in only[k])
                    and ("target" not in info.requires or has_target[j])]
            if not rows:
                continue
            idx = torch.tensor(rows)
            kwargs: dict[str, torch.Tensor] = {}
            if "content" in info.requires:
                kwargs["content"] = content[idx]
            if "style" in info.requires:
                kwargs["style"] = style[idx]
            if "target" in info.requires:
                kwargs["target"] = to_tensor([inputs[j][2] for j in rows])
            if wants_keys.setdefault(info.name, "keys" in inspect.signature(m.score).parameters):
                kwargs["keys"] = {"output": [f"out:{keys[j]}" for j in rows],
                                  "content": [f"content:{pairs[j].content_id}" for j in rows],
                                  "style": [f"style:{pairs[j].style_id}" for j in rows]}
            try:
                with torch.no_grad():
                    vals = m.score(x[idx], **kwargs).tolist()
            except Exception as exc:
                log.error("metric %s failed on %d samples: %s: %s", info.name, len(rows), type(exc).__name__, exc)
                continue
            for j, v in zip(rows, vals):
                if np.isfinite(v):
                    out[keys[j]].append(MetricValue(keys[j], info.name, float(v), info.higher_is_better, info.group,
                                                    info.version, info.backbone))
        return out

    def _write_png(self, im: Image.Image, rel: str) -> None:
        path = self.run_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.png")
        im.save(tmp)
        os.replace(tmp, path)

    def _save_grid_inputs(self) -> None:
        from sxbench.report import grid_pairs

        for pair in grid_pairs(self.pairs):
            content, style, target = self._inputs(pair)
            for kind, im, name in (("content", content, pair.content_id), ("style", style, pair.style_id),
                                   ("target", target, pair.pair_id)):
                rel = f"inputs/{kind}/{stable_hash(name, 16)}.png"
                if im is not None and not (self.run_dir / rel).exists():
                    self._write_png(im, rel)

    # -------------------------------------------------------------------------------------------- stages
    def run(self) -> RunSummary:
        cfg, spec = self.config, self.protocol.spec
        store = Store(self.run_dir)
        try:
            prov = provenance(cfg.device) | {"input_errors": list(self.protocol.input_errors),
                                              "skipped_metrics": dict(self.skipped_metrics)}
            config = {
                "protocol": spec.name, "protocol_version": spec.version, "protocol_params": spec.params,
                "resolution": spec.resolution, "resize_policy": spec.resize_policy, "seeds": list(self.seeds),
                "limit": cfg.limit, "methods": list(cfg.methods), "method_args": cfg.method_args,
                "metrics": [m.info.name for m in [*self.metrics, *self.set_metrics]], "device": cfg.device, "batch_size": cfg.batch_size, "retry_failed": cfg.retry_failed,
                "n_pairs": len(self.pairs), "argv": sys.argv,
            }
            run_id = store.begin_run(spec.name, config, prov)
            for m in [*self.metrics, *self.set_metrics]:
                store.register_metric(m.info)
            self._save_grid_inputs()
            generated = skipped = failed = 0
            failed_methods: dict[str, str] = {}
            for name in cfg.methods:
                try:
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
            rescored = self._complete_scores(store)
            self._set_scores(store)
            prov |= {"failed_methods": failed_methods}
            store.finish_run(run_id, prov)
        finally:
            store.close()
        return RunSummary(self.run_dir, generated, skipped, failed, rescored, dict(self.skipped_metrics),
                          failed_methods, tuple(self.protocol.input_errors))

    def _generate(self, store: Store, run_id: str, method: Method) -> tuple[int, int, int]:
        cfg, spec = self.config, self.protocol.spec
        info = method.info
        store.register_method(info)
        work = [(p, s, sample_key(info.config_hash, spec.name, spec.version, p, s)) for p in self.pairs for s in self.seeds]
        status = store.sample_status(k for _, _, k in work)
        todo = [w for w in work if w[2] not in status or (cfg.retry_failed and status[w[2]] == "error")]
        skipped, failed = len(work) - len(todo), 0
        if skipped:
            log.info("%s: %d of %d samples already stored, skipping them", info.name, skipped, len(work))
        bar = tqdm(total=len(todo), desc=info.name, unit="img", disable=not cfg.progress or not todo, leave=True)
        for batch in _chunks(todo, max(1, cfg.batch_size)):
            results = self._stylize(method, batch)
            ok = [(w, r) for w, r in zip(batch, results) if isinstance(r[0], Image.Image)]
            values = self._score([r[0] for _, r in ok], [w[0] for w, _ in ok], [w[2] for w, _ in ok]) if ok else {}
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
                )
                store.write_sample(record, values.get(key, []), routing if is_ok else ())
                self._committed += 1
                if self._kill_after is not None and self._committed >= self._kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)  # the test hook: committed, then killed like `kill -9`
            bar.update(len(batch))
        bar.close()
        return len(todo) - failed, skipped, failed

    def _stylize(self, method: Method, batch: Sequence[tuple[PairSpec, int, str]]) -> list[tuple[Any, float, int, _Meter, list]]:
        """Run one batch; on an exception retry sample by sample so one bad pair fails alone.

        Returns per sample ``(PIL image or error message, batch seconds, batch size, meter, routing rows)``.
        """
        try:
            contents, styles = zip(*[self._inputs(p)[:2] for p, _, _ in batch])
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
        for j, o in enumerate(outputs):
            rows = [] if routing is None else [
                (layer, slot, int(routing.indices[layer][j, slot]), float(routing.weights[layer][j, slot]), routing.num_experts)
                for layer in routing.indices for slot in range(routing.indices[layer].shape[1])]
            try:
                results.append((to_pil(o), meter.seconds, len(batch), meter, rows))
            except ValueError as exc:
                results.append((f"invalid output: {exc}", meter.seconds, len(batch), meter, []))
        return results

    def _complete_scores(self, store: Store) -> int:
        """Score stored samples that lack values for some of this run's metrics (from their PNGs)."""
        if not self.metrics:
            return 0
        samples = store.samples()
        samples = samples[(samples.status == "ok") & (samples.protocol == self.protocol.spec.name)]
        pairs = {p.pair_id: p for p in self.pairs}
        samples = samples[samples.pair_id.isin(pairs)]
        have = store.scored_metrics(samples.sample_key)
        names = {m.info.name for m in self.metrics}
        need: dict[str, set[str]] = {}
        for key, pair_id in zip(samples.sample_key, samples.pair_id):
            applicable = {m.info.name for m in self.metrics if "target" not in m.info.requires or pairs[pair_id].has_target}
            missing = (names & applicable) - have[key]
            if missing:
                need[key] = missing
        if not need:
            return 0
        rows = samples[samples.sample_key.isin(need)]
        n = 0
        for chunk in tqdm(list(_chunks(list(rows.itertuples()), 32)), desc="scoring", disable=not self.config.progress):
            outs = [load_image(self.run_dir / r.output_path) for r in chunk]
            keys = [r.sample_key for r in chunk]
            values = self._score(outs, [pairs[r.pair_id] for r in chunk], keys, only=need)
            for k in keys:
                store.write_values(values[k])
            n += len(chunk)
        return n


    def _set_scores(self, store: Store) -> None:
        """Set metrics per (method, subset): ``all`` and each split. Recomputed only when the set of samples or
        the metric version changed; output features are computed once and shared by every set metric."""
        if not self.set_metrics:
            return
        samples = store.samples()
        pairs = {p.pair_id: p for p in self.pairs}
        samples = samples[(samples.status == "ok") & (samples.protocol == self.protocol.spec.name)
                          & samples.pair_id.isin(pairs) & samples.seed.isin(self.seeds)
                          & samples.method.isin(self.config.methods)]
        values = store.values()
        stored = store.set_hashes()
        size = self.protocol.spec.resolution
        for (method, config_hash), rows in samples.groupby(["method", "method_config"]):
            subsets = {"all": rows} | {f"split={s}": g for s, g in rows.groupby("split")} if rows.split.nunique() > 1 \
                else {"all": rows}
            for subset, sub in subsets.items():
                digest = stable_hash(",".join(sorted(sub.sample_key)), 16)
                todo = [m for m in self.set_metrics
                        if stored.get((method, config_hash, m.info.name, subset)) != (digest, m.info.version)]
                if not todo:
                    continue
                if len(sub) < todo[0].min_samples:
                    for m in todo:
                        store.write_set_value(method, config_hash, m.info, subset, None, len(sub), digest)
                    continue
                feats_out, feats_style = [], []
                for chunk in _chunks(list(sub.itertuples()), 32):
                    outs = to_tensor([_at(load_image(self.run_dir / r.output_path), size) for r in chunk])
                    styles = to_tensor([self._style_image(pairs[r.pair_id].style_id, size) for r in chunk])
                    feats_out.append(todo[0].features(outs, [f"out:{r.sample_key}" for r in chunk]))
                    feats_style.append(todo[0].features(styles, [f"style:{pairs[r.pair_id].style_id}" for r in chunk]))
                fo, fs = np.concatenate(feats_out), np.concatenate(feats_style)
                for m in todo:
                    dist = None
                    dep = getattr(m, "distance_metric", None)
                    if dep:
                        v = values[(values.metric == dep) & values.sample_key.isin(sub.sample_key)]
                        dist = v.value.to_numpy() if len(v) == len(sub) else None
                    try:
                        val = m.compute(fo, fs, dist)
                    except Exception as exc:
                        log.error("set metric %s failed for %s (%s): %s: %s", m.info.name, method, subset,
                                  type(exc).__name__, exc)
                        val = None
                    store.write_set_value(method, config_hash, m.info, subset, val, len(sub), digest)

    def _style_image(self, style_id: str, size: int) -> Image.Image:
        return _at(self.protocol.style(style_id), size)


def _at(im: Image.Image, size: int) -> Image.Image:
    return im if im.size == (size, size) else im.resize((size, size), Image.Resampling.LANCZOS)


def run(config: RunConfig) -> RunSummary:
    """Run, store and score ``config``; then render the report."""
    from sxbench.report import render

    summary = Runner(config).run()
    render(summary.run_dir)
    return summary


def _weights_kwargs(name: str, cfg: "RunConfig") -> dict[str, Any]:
    """``{"weights_dir": ...}`` for methods that load registry weights (their constructor names it)."""
    if cfg.weights_dir is None:
        return {}
    try:
        accepts = "weights_dir" in inspect.signature(registry.methods.get(name)).parameters
    except (TypeError, ValueError):
        accepts = False
    return {"weights_dir": cfg.weights_dir} if accepts else {}
