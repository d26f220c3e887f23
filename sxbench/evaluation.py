"""Evaluation: the one owner of scoring, for every producer of outputs.

``sxbench run`` (``sxbench.runner``) and ``sxbench import`` (``sxbench.imported``) both produce samples and hand
them to an ``Evaluator``; neither scores anything itself. The evaluator

1. builds the metrics once, each as ``factory(context)`` from one explicit ``EvalContext`` (device, weights
   folder, the run's ``FeatureCache``); a default metric whose weights are missing is listed as not run;
2. scores batches of outputs (``score``): every backbone feature the metrics of the batch read (outputs and
   references, and the set metrics' output features) is computed first, once per (image, backbone,
   preprocessing), in small batches, and every metric then reads it from the cache;
3. scores stored samples that lack a metric (``complete``: a metric added later), from their PNGs;
4. computes set metrics per (method configuration, subset) from the collected features (``set_scores``), and
   the expert statistics of mixture methods from their stored routing (``expert_scores``); both are stored in
   ``set_values``, recomputed only when the samples or the metric version change.

Metric shape: one, ``sxbench.interfaces.Metric`` (``info`` with a ``scope``, built from the context, evaluated by
one method whose input the scope defines):

=========== ========================================= ==================================================
scope       class                                     evaluated by
=========== ========================================= ==================================================
``image``   ``sxbench.interfaces.ImageMetric``         ``score(output, *, content, style, target, keys)`` → ``(B,)``
``set``     ``sxbench.metrics.sets.SetMetric``         ``evaluate(SetView)`` → ``SetResult``
``experts`` ``sxbench.metrics.experts.ExpertMetric``   ``compute(RoutingView)`` → float
=========== ========================================= ==================================================

It is our own small protocol rather than torchmetrics' ``Metric``: every per-image value is stored under its
sample key (not reduced to a running mean), the subsets of a set metric are chosen after scoring, and features
are shared between metrics by the evaluator; ``update``/``compute`` states would have been an unused shell.

Progress: every phase that can take more than a few seconds shows a progress bar (``progress=True``) and logs
one line when it starts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from sxbench import registry
from sxbench.features import FeatureCache, image_key
from sxbench.imageio import ImageLoadError, load_image, to_tensor
from sxbench.interfaces import EvalContext, ImageMetric, Metric, PairSpec, Protocol
from sxbench.metrics.experts import EXPERT_METRICS, ExpertMetric, RoutingView
from sxbench.metrics.sets import SET_N_BOOT, SET_SEED, SetMetric, SetView, style_draws
from sxbench.records import MetricValue, stable_hash
from sxbench.store import Store, UnsafePathError, contained
from sxbench.weights import WeightsChecksumError, WeightsMissingError

log = logging.getLogger(__name__)

FEATURE_BATCH = 4
"""Images per backbone call: on CPU, DINOv2-S, VGG-19 and Inception run 10–30 % faster per image at 4 than at 8
or 32 (``benchmarks/bench_evaluation.py``)."""

FEATURE_DIR = Path("cache") / "features"
"""The run folder's feature files (``sxbench.features``); deleting it only costs recomputation."""


def chunks(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    """``items`` in consecutive slices of ``n``."""
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _at(im: Image.Image, size: int) -> Image.Image:
    return im if im.size == (size, size) else im.resize((size, size), Image.Resampling.LANCZOS)


@dataclass(frozen=True)
class Item:
    """One output to score: its sample key, its pair and the image."""

    key: str
    pair: PairSpec
    image: Image.Image


class Evaluator:
    """Scores the samples of one protocol (``pairs`` × ``seeds``) with ``metrics`` (default: the protocol's).

    Args:
        protocol: gives the content, style and target images of each pair.
        metrics: metric names; ``None`` takes the protocol's defaults, skipping (with a reason in ``skipped``)
            those not installed or whose weights are missing. Named metrics that cannot be built raise.
        device, weights_dir: the ``EvalContext``.
        run_dir: the run folder; its ``cache/features`` keeps reference and set features between runs.
        progress: show progress bars.
    """

    def __init__(self, protocol: Protocol, pairs: Sequence[PairSpec], seeds: Sequence[int], *,
                 metrics: Sequence[str] | None = None, device: str = "cpu", weights_dir: str | None = None,
                 run_dir: str | Path | None = None, progress: bool = True) -> None:
        self.protocol = protocol
        self.pairs = tuple(pairs)
        self.seeds = tuple(seeds)
        self.progress = progress
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.cache = FeatureCache(self.run_dir / FEATURE_DIR if self.run_dir is not None else None)
        self.context = EvalContext(device=device, weights_dir=weights_dir, cache=self.cache)
        self.skipped: dict[str, str] = {}
        self.image_metrics: list[ImageMetric] = []
        self.set_metrics: list[SetMetric] = []
        self.expert_metrics: list[ExpertMetric] = [cls(self.context) for cls in EXPERT_METRICS]
        self._out_keys: dict[str, str] = {}  # sample key → image key of its output (this process)
        self._ref_keys: dict[tuple[str, str], str] = {}  # (kind, id) → image key
        explicit = metrics is not None
        names = list(dict.fromkeys(metrics if explicit else protocol.spec.metrics))
        for name in list(names):
            if name not in registry.metrics and not explicit:  # a protocol default this install lacks
                self.skipped[name] = f"not run: metric {name!r} is not available in this installation"
                names.remove(name)
                continue
            dep = getattr(registry.metrics.get(name), "distance_metric", None)  # unknown explicit names fail here
            if dep and dep not in names:  # set metrics built on a per-image metric get it too (artfid_st)
                names.append(dep)
        if names:
            log.info("loading %d metric(s): %s", len(names), ", ".join(names))
        for name in names:
            try:
                metric: Metric = registry.metrics.get(name)(self.context)
            except WeightsMissingError as exc:
                if explicit:  # asked for by name: fail now, before any work
                    raise
                self.skipped[name] = f"not run: {exc}"
                why = "weights fail their checksum" if isinstance(exc, WeightsChecksumError) else "weights missing"
                log.warning("metric %s not run: %s (see `sxbench weights list`)", name, why)
                continue
            except Exception as exc:
                if explicit:
                    raise
                self.skipped[name] = f"not run: {type(exc).__name__}: {exc}"
                log.warning("metric %s skipped: %s", name, exc)
                continue
            scope = metric.info.scope
            if scope == "image" and isinstance(metric, ImageMetric):
                self.image_metrics.append(metric)
            elif scope == "set" and isinstance(metric, SetMetric):
                self.set_metrics.append(metric)
            else:
                raise TypeError(f"metric {name!r}: a {type(metric).__name__} of scope {scope!r}; metrics are "
                                "ImageMetric (scope 'image') or SetMetric (scope 'set'), see sxbench.evaluation")
        self._plan = self._feature_plan(self.image_metrics, self.set_metrics)

    @property
    def metrics(self) -> list[Metric]:
        """Every metric this evaluator computes (image, set, experts), in that order."""
        return [*self.image_metrics, *self.set_metrics, *self.expert_metrics]

    def register(self, store: Store) -> None:
        for m in self.metrics:
            store.register_metric(m.info)

    # ------------------------------------------------------------------------------------- features
    @staticmethod
    def _feature_plan(image_metrics: Sequence[ImageMetric], set_metrics: Sequence[SetMetric]) -> list[dict[str, Any]]:
        """One entry (``ext``, ``role``, ``fields``, ``persist``, ``keep``) for every backbone pass a batch needs,
        one per (backbone, role): the metrics' reads merged, so DINO runs once for ``dino_content`` and
        ``dino_structure``. References are kept in memory for the run (``keep``) unless a metric says they are
        too large (the pairwise LPIPS trunks); then they live in the size-bounded recent memory."""
        plan: dict[tuple[int, str], dict[str, Any]] = {}

        def entry(ext: Any, role: str) -> dict[str, Any]:
            return plan.setdefault((id(ext), role), {"ext": ext, "role": role, "fields": set(), "all": False,
                                                     "persist": set(), "keep": role != "output"})

        for m in image_metrics:
            ext = getattr(m, "extractor", None)
            for role in getattr(m, "roles", ()) if ext is not None else ():
                e = entry(ext, role)
                e["fields"].update(m.fields)
                e["all"] |= not m.fields
                if role != "output" and m.persist_references and m.fields:
                    e["persist"].update(m.fields)
                if role != "output" and not m.persist_references:
                    e["keep"] = False
        for m in set_metrics:
            for role in m.roles:
                e = entry(m.extractor, role)
                e["fields"].update(m.fields)
                e["persist"].update(m.fields)  # set features are read again when the set metrics are computed
        return [{"ext": e["ext"], "role": e["role"], "fields": () if e["all"] else tuple(sorted(e["fields"])),
                 "persist": tuple(sorted(e["persist"])), "keep": e["keep"]} for e in plan.values()]

    def _ref_key(self, kind: str, ident: str, im: Image.Image) -> str:
        k = self._ref_keys.get((kind, ident))
        if k is None:
            k = self._ref_keys[(kind, ident)] = image_key(im)
        return k

    def _prefetch(self, plan: list[dict[str, Any]], images: dict[str, torch.Tensor], keys: dict[str, list[str]]) -> None:
        for e in plan:
            if e["role"] not in images:
                continue
            try:
                with torch.no_grad():
                    self.cache.features(e["ext"], images[e["role"]], keys[e["role"]], fields=e["fields"],
                                        keep=e["keep"], persist=e["persist"], batch=FEATURE_BATCH)
            except Exception as exc:  # the metrics on this backbone fail alone (and say so); the others go on
                log.error("%s features of the %ss failed: %s: %s", e["ext"].backbone, e["role"], type(exc).__name__, exc)

    # ---------------------------------------------------------------------------------- per image
    def score(self, items: Sequence[Item], only: dict[str, set[str]] | None = None) -> dict[str, list[MetricValue]]:
        """Values of every image metric for each item (``only[key]``: just those metrics for that sample); the
        set metrics' features of the outputs are computed on the way. Non-finite values are dropped; a metric
        that fails logs one line and the others go on."""
        out: dict[str, list[MetricValue]] = {it.key: [] for it in items}
        if not items:
            return out
        size = self.protocol.spec.resolution
        outs = [_at(it.image, size) for it in items]
        contents = [self.protocol.content(it.pair.content_id) for it in items]
        styles = [_at(self.protocol.style(it.pair.style_id), size) for it in items]
        targets = [self.protocol.target(it.pair.pair_id) if it.pair.has_target else None for it in items]
        keys = {"output": [image_key(o) for o in outs],
                "content": [self._ref_key("content", it.pair.content_id, c) for it, c in zip(items, contents)],
                "style": [self._ref_key("style", it.pair.style_id, s) for it, s in zip(items, styles)]}
        keys["target"] = [self._ref_key("target", it.pair.pair_id, t) if t is not None else "" for it, t in zip(items, targets)]
        for it, k in zip(items, keys["output"]):
            self._out_keys[it.key] = k
        images = {"output": to_tensor(outs), "content": to_tensor(contents), "style": to_tensor(styles)}
        wanted = {m.info.name: [j for j, it in enumerate(items) if (only is None or m.info.name in only.get(it.key, ()))
                                and ("target" not in m.info.requires or targets[j] is not None)]
                  for m in self.image_metrics}
        # scoring new outputs also collects the set metrics' features; rescoring computes only what it needs
        plan = self._plan if only is None else self._feature_plan([m for m in self.image_metrics if wanted[m.info.name]], [])
        self._prefetch(plan, images, keys)
        for m in self.image_metrics:
            info = m.info
            rows = wanted[info.name]
            if not rows:
                continue
            idx = torch.tensor(rows)
            kwargs: dict[str, Any] = {"keys": {r: [keys[r][j] for j in rows] for r in keys}}
            if "content" in info.requires:
                kwargs["content"] = images["content"][idx]
            if "style" in info.requires:
                kwargs["style"] = images["style"][idx]
            if "target" in info.requires:
                kwargs["target"] = to_tensor([targets[j] for j in rows])
            try:
                with torch.no_grad():
                    vals = m.score(images["output"][idx], **kwargs).tolist()
            except Exception as exc:
                log.error("metric %s failed on %d samples: %s: %s", info.name, len(rows), type(exc).__name__, exc)
                continue
            weights = _weights(m)
            for j, v in zip(rows, vals):
                key = items[j].key  # a non-finite value is stored as failed (NULL): not retried unless asked
                out[key].append(MetricValue(key, info.name, float(v) if np.isfinite(v) else None, info.higher_is_better,
                                            info.group, info.version, info.backbone, weights))
        return out

    def complete(self, store: Store, run_dir: Path, retry_failed: bool = False) -> int:
        """Score stored samples of this protocol's pairs that lack values for some of this evaluator's image
        metrics (a metric added later), or hold one computed with other backbone weights or by another version of
        the metric (never pooled), or a failed one when ``retry_failed``; from their PNGs. Returns how many samples
        were rescored."""
        if not self.image_metrics:
            return 0
        samples = store.samples()
        samples = samples[(samples.status == "ok") & (samples.protocol == self.protocol.spec.name)]
        pairs = {p.pair_id: p for p in self.pairs}
        samples = samples[samples.pair_id.isin(pairs)]
        have = store.scored(samples.sample_key)
        weights = {m.info.name: _weights(m) for m in self.image_metrics}
        need: dict[str, set[str]] = {}
        for key, pair_id in zip(samples.sample_key, samples.pair_id):
            missing = set()
            for m in self.image_metrics:
                name = m.info.name
                if "target" in m.info.requires and not pairs[pair_id].has_target:
                    continue
                stored = have[key].get(name)  # missing, other weights, another metric version, or failed and asked
                if (stored is None or stored[1] != weights[name] or stored[2] != m.info.version
                        or (retry_failed and stored[0])):
                    missing.add(name)
            if missing:
                need[key] = missing
        if not need:
            return 0
        rows = list(samples[samples.sample_key.isin(need)].itertuples())
        log.info("scoring %d stored samples that lack a metric, or whose values came from other weights", len(rows))
        bar = tqdm(total=len(rows), desc="rescoring", unit="img", disable=not self.progress)
        unreadable = []
        for chunk in chunks(rows, 8):
            items = []
            for r in chunk:
                try:
                    items.append(Item(r.sample_key, pairs[r.pair_id], load_image(contained(run_dir, r.output_path))))
                except (ImageLoadError, UnsafePathError) as exc:
                    unreadable.append(f"{r.method}: {exc}")
            values = self.score(items, only=need)
            for it in items:
                store.write_values(values[it.key])
            bar.update(len(chunk))
        bar.close()
        if unreadable:  # native outputs are healed by the runner before this; imported ones cannot be remade
            log.warning("%d stored outputs could not be read and were not scored (first: %s); run their method "
                        "again, or import them again", len(unreadable), unreadable[0])
        return len(rows) - len(unreadable)

    # ---------------------------------------------------------------------------------------- sets
    def _subsets(self, store: Store, methods: Sequence[str] | None) -> list[tuple[str, str, str, pd.DataFrame]]:
        samples = store.samples()
        pairs = {p.pair_id for p in self.pairs}
        keep = ((samples.status == "ok") & (samples.protocol == self.protocol.spec.name)
                & samples.pair_id.isin(pairs) & samples.seed.isin(self.seeds))
        if methods is not None:
            keep &= samples.method.isin(list(methods))
        out = []
        # in (pair, seed) order, not the order the store received them (a merged store's, an import's): the set
        # metrics' sums and KID's random subsets then see the same rows in the same order however they were produced
        for (method, config), rows in samples[keep].sort_values(["pair_id", "seed"]).groupby(["method", "method_config"]):
            out.append((method, config, "all", rows))
            if rows.split.nunique() > 1:
                out += [(method, config, f"split={s}", g) for s, g in rows.groupby("split")]
        return out

    def _set_features(self, m: SetMetric, rows: pd.DataFrame, run_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
        """Features of the outputs (collected while scoring; read back from the feature files for samples scored
        by an earlier process; computed from the PNG only when neither has them) and of their distinct style
        references (each image once), with the style id of every output row and of every reference row."""
        size = self.protocol.spec.resolution
        pairs = {p.pair_id: p for p in self.pairs}
        rows_ = list(rows.itertuples())
        images: dict[int, Image.Image] = {}
        keys = []
        for i, r in enumerate(rows_):
            k = self._out_keys.get(r.sample_key)
            if k is None:  # scored by an earlier process: the PNG's pixels name its features
                images[i] = _at(load_image(contained(run_dir, r.output_path)), size)
                k = self._out_keys[r.sample_key] = image_key(images[i])
            keys.append(k)

        def outputs(idx: list[int]) -> torch.Tensor:
            return to_tensor([images.get(i) or _at(load_image(contained(run_dir, rows_[i].output_path)), size)
                              for i in idx])

        out_styles = [pairs[r.pair_id].style_id for r in rows_]
        refs: dict[str, tuple[str, Image.Image]] = {}  # image key → (its first style id, image): distinct images
        for sid in dict.fromkeys(out_styles):
            im = _at(self.protocol.style(sid), size)
            refs.setdefault(self._ref_key("style", sid, im), (sid, im))
        skeys = list(refs)
        with torch.no_grad():
            fo = self.cache.features(m.extractor, outputs, keys, fields=m.fields, persist=m.fields, batch=FEATURE_BATCH)
            fs = self.cache.features(m.extractor, to_tensor([im for _, im in refs.values()]), skeys, fields=m.fields,
                                     keep=True, persist=m.fields, batch=FEATURE_BATCH)
        return (fo[m.field].double().cpu().numpy(), fs[m.field].double().cpu().numpy(), out_styles,
                [sid for sid, _ in refs.values()])

    def _style_list(self, subset: str) -> list[str]:
        """The styles of this protocol's pairs in ``subset`` (``all`` or ``split=S``), sorted: the clusters of the set
        metrics' bootstrap, the same for every method, so their replicates are paired."""
        split = subset.removeprefix("split=") if subset.startswith("split=") else None
        return sorted({p.style_id for p in self.pairs if split is None or p.split == split})

    def set_scores(self, store: Store, run_dir: Path, methods: Sequence[str] | None = None) -> int:
        """Set metrics per (method configuration, subset): ``all`` and each split, each with a style-cluster
        bootstrap interval (``sxbench.metrics.sets``). Recomputed only when the set of samples or the metric version
        changed. Returns how many values were computed."""
        if not self.set_metrics:
            return 0
        values = None
        stored = store.set_hashes()
        todo = []
        for method, config, subset, rows in self._subsets(store, methods):
            keys = ",".join(sorted(rows.sample_key))
            ms = [m for m in self.set_metrics  # the digest covers the samples and the weights that see them
                  if stored.get((method, config, m.info.name, subset)) != (_set_digest(keys, m), m.info.version)]
            if ms:
                todo.append((method, config, subset, rows, keys, ms))
        if not todo:
            return 0
        log.info("set metrics (%s): %d method × subset cells, %d bootstrap replicates each",
                 ", ".join(m.info.name for m in self.set_metrics), len(todo), SET_N_BOOT)
        n = 0
        draws: dict[str, tuple[dict[str, int], np.ndarray, str]] = {}  # subset → (style index, counts, boot id)
        for method, config, subset, rows, keys, ms in tqdm(todo, desc="set metrics", unit="set",
                                                              disable=not self.progress):
            if subset not in draws:
                styles = self._style_list(subset)
                draws[subset] = ({s: i for i, s in enumerate(styles)}, style_draws(len(styles)),
                                 f"style:{len(styles)}x{SET_N_BOOT}:{SET_SEED}:{stable_hash(styles, 12)}")
            index, counts, boot = draws[subset]
            feats: dict[tuple[str, str], SetView] = {}
            view_values: dict[str, np.ndarray] = {}
            deps = {m.distance_metric for m in ms if m.distance_metric}
            if deps:
                values = store.values() if values is None else values
                for dep in deps:  # in the rows' order, complete columns only
                    v = values[values.metric == dep].set_index("sample_key").value.reindex(rows.sample_key)
                    if v.notna().all():
                        view_values[dep] = v.to_numpy(np.float64)
            for m in ms:
                digest = _set_digest(keys, m)
                try:
                    fkey = (m.backbone_name, m.field)  # each set metric gets its own backbone's feature
                    if fkey not in feats:
                        fo, fs, out_styles, ref_styles = self._set_features(m, rows, run_dir)
                        feats[fkey] = SetView({m.backbone_name: fo}, {m.backbone_name: fs}, view_values,
                                              np.array([index[s] for s in out_styles], dtype=np.intp),
                                              np.array([index[s] for s in ref_styles], dtype=np.intp), counts)
                    view = feats[fkey]
                    if min(view.n, view.n_references) < m.min_samples:  # too few outputs or distinct references
                        store.write_set_value(method, config, m.info, subset, None, view.n, digest,
                                              n_ref=view.n_references, boot=boot)
                        continue
                    res = m.evaluate(view)
                except Exception as exc:  # not stored: the next run tries again
                    log.error("set metric %s failed for %s (%s): %s: %s", m.info.name, method, subset,
                              type(exc).__name__, exc)
                    continue
                ok = res.value is not None and np.isfinite(res.value)
                lo, hi = res.interval()
                store.write_set_value(method, config, m.info, subset, float(res.value) if ok else None, view.n, digest,
                                      ci_low=lo, ci_high=hi, std=res.std, n_ref=view.n_references,
                                      replicates=res.replicates, boot=boot)
                n += 1
        return n

    # ------------------------------------------------------------------------------------- experts
    def expert_scores(self, store: Store, methods: Sequence[str] | None = None) -> int:
        """Expert statistics (``sxbench.metrics.experts``) of every method configuration with stored routing on
        this protocol, stored as set values (subset ``all``, ``n`` = distinct styles). Returns how many."""
        routing = store.routing()
        if not len(routing):
            return 0
        samples = store.samples()
        ours = samples[(samples.protocol == self.protocol.spec.name) & (samples.status == "ok")].sample_key
        routing = routing[routing.sample_key.isin(ours)]
        if methods is not None:
            routing = routing[routing.method.isin(list(methods))]
        stored = store.set_hashes()
        n = 0
        groups = list(routing.groupby(["method", "method_config"]))
        for (method, config), d in tqdm(groups, desc="expert statistics", unit="method",
                                        disable=not self.progress or len(groups) < 2):
            digest = stable_hash(",".join(sorted(d.sample_key.unique())), 16)
            todo = [m for m in self.expert_metrics
                    if stored.get((method, config, m.info.name, "all")) != (digest, m.info.version)]
            if not todo:
                continue
            view = RoutingView(d, int(d.num_experts.iloc[0]))
            for m in todo:
                try:
                    val = float(m.compute(view))
                except Exception as exc:
                    log.error("expert statistic %s failed for %s: %s: %s", m.info.name, method, type(exc).__name__, exc)
                    val = None
                store.write_set_value(method, config, m.info, "all", val if val is None or np.isfinite(val) else None,
                                      view.n_styles, digest)
                n += 1
        return n

    def finish(self, store: Store, run_dir: Path, methods: Sequence[str] | None = None, *,
               retry_failed: bool = False) -> int:
        """After the producers: rescoring, set metrics and expert statistics. Returns the rescored sample count."""
        rescored = self.complete(store, run_dir, retry_failed)
        self.set_scores(store, run_dir, methods)
        self.expert_scores(store, methods)
        return rescored


def _weights(metric: Metric) -> str | None:
    """sha256 of the weights of the backbone behind ``metric`` (``None`` for weight-free metrics)."""
    return getattr(getattr(metric, "extractor", None), "weights_sha256", None)


def _set_digest(keys: str, metric: SetMetric) -> str:
    w = _weights(metric)
    return stable_hash(keys if w is None else [keys, w], 16)


__all__ = ["FEATURE_BATCH", "Evaluator", "Item", "chunks"]
