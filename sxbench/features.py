"""Backbone features by image: computed once per (image, backbone, preprocessing), shared by every metric.

An image is named by ``image_key`` (the sha256 of its RGB pixels and size), a backbone by its extractor's
``tag`` (name, first 16 hex digits of the weights' sha256, input resolution), so identical pixels never pass
through a backbone twice in a run, whatever produced them (``identity``'s outputs are the contents).

``FeatureCache`` holds features in memory: references (``keep=True``) for the whole run, outputs for the last
``recent`` images. With a ``root`` (the run folder's ``cache/features``) it also writes the fields named in
``persist`` to one safetensors file per (backbone tag, image), and reads them back in a later process: content
and style references and the set metrics' output features are computed once per run folder, not once per run.
A file that cannot be read is recomputed and rewritten (the cache is never the only copy of anything).
"""

from __future__ import annotations

import hashlib
import logging
import os
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
    """``<backbone>-<sha256[:16]>-<resolution>``: the folder of an extractor's feature files."""
    sha = (getattr(extractor, "weights_sha256", None) or "unverified")[:16]
    return f"{extractor.backbone}-{sha}-{getattr(extractor, 'resolution', 0)}"


class FeatureCache:
    """Memory (and optionally disk) of features by ``(backbone tag, image key)``; see the module docstring."""

    def __init__(self, root: str | Path | None = None, recent: int = 256) -> None:
        self.root = Path(root) if root is not None else None
        self.recent = recent
        self._mem: dict[tuple[str, str], Features] = {}
        self._recent: OrderedDict[tuple[str, str], Features] = OrderedDict()
        self.computed = 0
        """Images passed through a backbone by this cache (all backbones)."""
        self.loaded = 0
        """Images whose features were read from disk."""

    def __len__(self) -> int:
        return len(self._mem) + len(self._recent)

    # ------------------------------------------------------------------------------------------- memory
    def _get(self, key: tuple[str, str]) -> Features | None:
        if key in self._mem:
            return self._mem[key]
        return self._recent.get(key)

    def _put(self, key: tuple[str, str], value: Features, keep: bool) -> None:
        if keep:
            self._mem[key] = value
            self._recent.pop(key, None)
        elif key not in self._mem:
            self._recent[key] = value
            self._recent.move_to_end(key)
            while len(self._recent) > self.recent:
                self._recent.popitem(last=False)

    # --------------------------------------------------------------------------------------------- disk
    def _path(self, t: str, key: str) -> Path:
        assert self.root is not None
        return self.root / t / key[:2] / f"{key}.safetensors"

    def _load(self, t: str, key: str, fields: Iterable[str]) -> Features | None:
        if self.root is None:
            return None
        path = self._path(t, key)
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            data = load_file(str(path))
        except Exception as exc:  # a damaged cache file is recomputed, never trusted
            log.warning("feature cache %s unreadable (%s); recomputing it", path, exc)
            return None
        return data if all(f in data for f in fields) else None

    def _save(self, t: str, key: str, feats: Features, fields: Iterable[str]) -> None:
        from safetensors.torch import save_file

        path = self._path(t, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file({f: feats[f].detach().cpu().contiguous() for f in fields}, str(tmp))
        os.replace(tmp, path)

    # ---------------------------------------------------------------------------------------------- api
    def features(self, extractor: torch.nn.Module, images: torch.Tensor | Callable[[list[int]], torch.Tensor],
                 keys: Sequence[str] | None = None, *, keep: bool = False, persist: Iterable[str] = (),
                 batch: int | None = None) -> Features:
        """Features of ``images`` ``(B, 3, H, W)`` named by ``keys``, stacked ``{field: (B, ...)}``.

        Args:
            images: the images, or a function giving the images of the rows it is asked for (only those not in
                memory or on disk are asked for: stored outputs need not be read to reuse their features).
            keys: one image key per row (``image_key``); ``None`` computes without caching.
            keep: hold these images' features in memory for the whole run (references), not only recently.
            persist: fields to write to (and read from) the run folder's feature files for these images.
            batch: compute missing images ``batch`` at a time (small batches run faster on CPU); default all.
        """
        if keys is None:
            return extractor(images if isinstance(images, torch.Tensor) else images(list(range(len(keys or ())))))
        t, persist = tag(extractor), tuple(persist)
        rows: list[Features | None] = []
        for k in keys:
            got = self._get((t, k))
            if got is None and persist:
                got = self._load(t, k, persist)
                if got is not None:
                    self.loaded += 1
                    self._put((t, k), got, keep)
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
            dev = next(extractor.parameters(), x).device
            new = extractor(x.to(dev))
            for j, i in enumerate(idx):
                feats = {n: v[j].detach() for n, v in new.items()}
                self._put((t, keys[i]), feats, keep)
                if persist and self.root is not None:
                    self._save(t, keys[i], feats, persist)
                rows[i] = feats
            self.computed += len(idx)
        for i, k in enumerate(keys):
            if rows[i] is None:
                rows[i] = rows[first[k]]
        names = [n for n in rows[0] if all(n in r for r in rows)]  # type: ignore[union-attr]
        return {n: torch.stack([r[n] for r in rows]) for n in names}  # type: ignore[index]
