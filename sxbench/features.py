"""Backbone features by image: computed once per (image, backbone, preprocessing), shared by every metric.

An image is named by ``image_key`` (the sha256 of its RGB pixels and size), a backbone by its extractor's
``tag`` (name, first 16 hex digits of the weights' sha256, input resolution), so identical pixels never pass
through a backbone twice in a run, whatever produced them (``identity``'s outputs are the contents).

``FeatureCache`` holds features in memory: references (``keep=True``) for the whole run, everything else in a
least-recently-used memory of at most ``recent_bytes`` (outputs, and the large pairwise LPIPS trunks). With a
``root`` (the run folder's ``cache/features``) it also writes the fields named in
``persist`` to one safetensors file per (backbone tag, image), and reads them back in a later process: content
and style references and the set metrics' output features are computed once per run folder, not once per run.
A file that cannot be read is recomputed and rewritten (the cache is never the only copy of anything).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from PIL import Image

log = logging.getLogger(__name__)

Features = dict[str, torch.Tensor]


def image_key(im: Image.Image) -> str:
    """sha256 (hex) of an image's mode, size and pixel bytes."""
    h = hashlib.sha256(f"{im.mode}:{im.width}x{im.height}:".encode())
    h.update(im.tobytes())
    return h.hexdigest()


def tag(extractor: torch.nn.Module) -> str:
    """``<backbone>-<sha256[:16]>-<resolution>-v<feature_version>``: the folder of an extractor's feature files
    (``feature_version`` is bumped when an extractor's preprocessing or outputs change for the same weights)."""
    sha = (getattr(extractor, "weights_sha256", None) or "unverified")[:16]
    return (f"{extractor.backbone}-{sha}-{getattr(extractor, 'resolution', 0)}"
            f"-v{getattr(extractor, 'feature_version', '1')}")


def _device(extractor: torch.nn.Module) -> torch.device:
    p = next(extractor.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class FeatureCache:
    """Memory (and optionally disk) of features by ``(backbone tag, image key)``; see the module docstring."""

    def __init__(self, root: str | Path | None = None, recent_bytes: int = 2 << 30) -> None:
        self.root = Path(root) if root is not None else None
        self.recent_bytes = recent_bytes
        self._mem: dict[tuple[str, str], Features] = {}
        self._recent: OrderedDict[tuple[str, str], Features] = OrderedDict()
        self._recent_size = 0
        self._partial: set[tuple[str, str]] = set()  # entries read from disk: only the persisted fields
        self._save_failed = False
        self._disk: dict[tuple[str, str], set[str]] = {}
        self.computed = 0
        """Images passed through a backbone by this cache (all backbones)."""
        self.loaded = 0
        """Images whose features were read from disk."""

    def __len__(self) -> int:
        return len(self._mem) + len(self._recent)

    # ------------------------------------------------------------------------------------------- memory
    def _get(self, key: tuple[str, str], fields: Sequence[str]) -> Features | None:
        """The entry if it holds ``fields`` (all of the extractor's features when empty)."""
        got = self._mem.get(key)
        if got is None:
            got = self._recent.get(key)
            if got is not None:
                self._recent.move_to_end(key)
        if got is None or (not fields and key in self._partial) or any(f not in got for f in fields):
            return None
        return got

    def _put(self, key: tuple[str, str], value: Features, keep: bool, partial: bool = False) -> None:
        if partial:
            self._partial.add(key)
        else:
            self._partial.discard(key)
        if key in self._recent:
            self._recent_size -= _nbytes(self._recent.pop(key))
        if keep or key in self._mem:
            self._mem[key] = value
            return
        self._recent[key] = value
        self._recent_size += _nbytes(value)
        while self._recent_size > self.recent_bytes and len(self._recent) > 1:
            _, old = self._recent.popitem(last=False)
            self._recent_size -= _nbytes(old)

    # --------------------------------------------------------------------------------------------- disk
    def _path(self, t: str, key: str) -> Path:
        assert self.root is not None
        return self.root / t / key[:2] / f"{key}.safetensors"

    def _load(self, t: str, key: str, fields: Iterable[str], device: torch.device) -> Features | None:
        if self.root is None:
            return None
        path = self._path(t, key)
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            data = load_file(str(path), device=str(device))
        except Exception as exc:  # a damaged cache file is recomputed, never trusted
            log.warning("feature cache %s unreadable (%s); recomputing it", path, exc)
            return None
        return data if all(f in data for f in fields) else None

    def _on_disk(self, t: str, key: str) -> set[str]:
        """Fields the feature file of ``(t, key)`` holds (remembered after the first look)."""
        if (t, key) not in self._disk:
            path, found = self._path(t, key), set()
            if path.is_file():
                from safetensors import safe_open

                try:
                    with safe_open(str(path), "pt") as f:
                        found = set(f.keys())
                except Exception:
                    found = set()
            self._disk[(t, key)] = found
        return self._disk[(t, key)]

    def _persist(self, t: str, key: str, feats: Features, fields: tuple[str, ...]) -> None:
        """Write ``fields`` of ``feats`` to the feature file unless it holds them already; the file keeps the
        fields other roles wrote (an image can be a style for one metric and an output or a content for another)."""
        if self.root is None or not fields or set(fields) <= self._on_disk(t, key):
            return
        if not all(f in feats for f in fields):
            return
        have = self._on_disk(t, key)
        merged = dict(feats)
        if have - set(fields):
            old = self._load(t, key, (), torch.device("cpu")) or {}
            merged = old | {f: feats[f] for f in fields}
            fields = tuple(sorted(set(fields) | set(old)))
        self._save(t, key, merged, fields)
        self._disk[(t, key)] = set(fields)

    def _save(self, t: str, key: str, feats: Features, fields: Iterable[str]) -> None:
        """Best effort: a cache that cannot be written (disk full, read-only folder) costs recomputation later."""
        from safetensors.torch import save_file

        path = self._path(t, key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # runner.TEMPORARY_GLOB
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({f: feats[f].detach().cpu().contiguous() for f in fields}, str(tmp))
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if not self._save_failed:
                log.warning("feature cache not written under %s (%s); features will be recomputed next time",
                            self.root, exc)
            self._save_failed = True

    # ---------------------------------------------------------------------------------------------- api
    def features(self, extractor: torch.nn.Module, images: torch.Tensor | Callable[[list[int]], torch.Tensor],
                 keys: Sequence[str] | None = None, *, fields: Sequence[str] = (), keep: bool = False,
                 persist: Iterable[str] = (), batch: int | None = None) -> Features:
        """Features of ``images`` ``(B, 3, H, W)`` named by ``keys``, stacked ``{field: (B, ...)}``.

        Args:
            images: the images, or a function giving the images of the rows it is asked for (only those not in
                memory or on disk are asked for: stored outputs need not be read to reuse their features).
            keys: one image key per row (``image_key``); ``None`` computes without caching.
            fields: the features the caller reads (empty: all); a cached entry without them is computed again.
            keep: hold these images' features in memory for the whole run (references), not only recently.
            persist: fields to write to (and read from) the run folder's feature files for these images.
            batch: compute missing images ``batch`` at a time (small batches run faster on CPU), the last call padded
                to ``batch`` rows with copies of its last image, so every call has one shape and an image's features
                are the same bits whichever images came with it (runs split over processes store what one process
                stores); default all at once.
        """
        dev = _device(extractor)
        if keys is None:  # nothing names the images: compute, cache nothing
            if not isinstance(images, torch.Tensor):
                raise TypeError("features(): images given as a function need keys")
            return extractor(images.to(dev))
        t, persist, fields = tag(extractor), tuple(persist), tuple(fields)
        rows: list[Features | None] = []
        for k in keys:
            got = self._get((t, k), fields)
            if got is None and persist and fields and set(fields) <= set(persist):
                got = self._load(t, k, persist, dev)
                if got is not None:
                    self.loaded += 1
                    self._put((t, k), got, keep, partial=True)
            elif got is not None:
                if keep and (t, k) not in self._mem:  # a reference first seen as an output (identity)
                    self._put((t, k), got, keep, partial=(t, k) in self._partial)
                self._persist(t, k, got, persist)
            rows.append(got)
        first: dict[str, int] = {}
        for i, (k, r) in enumerate(zip(keys, rows)):
            if r is None:
                first.setdefault(k, i)  # a key repeated in one call is computed once
        todo = list(first.values())
        step = batch or max(len(todo), 1)
        for s in range(0, len(todo), step):
            idx = todo[s : s + step]
            x = images[torch.tensor(idx)] if isinstance(images, torch.Tensor) else images(idx)
            if batch and len(idx) < batch:  # one shape for every call: an image's features never depend on how many
                x = torch.cat([x, x[-1:].expand(batch - len(idx), *x.shape[1:])])  # came with it (exact across shards)
            new = extractor(x.to(dev))
            for j, i in enumerate(idx):
                feats = {n: v[j].detach() for n, v in new.items()}
                self._put((t, keys[i]), feats, keep)
                self._persist(t, keys[i], feats, persist)
                rows[i] = feats
            self.computed += len(idx)
        for i, k in enumerate(keys):
            if rows[i] is None:
                rows[i] = rows[first[k]]
        names = list(fields) or [n for n in rows[0] if all(n in r for r in rows)]  # type: ignore[union-attr]
        return {n: torch.stack([r[n] for r in rows]) for n in names}  # type: ignore[index]


def _nbytes(feats: Features) -> int:
    return sum(v.numel() * v.element_size() for v in feats.values())
