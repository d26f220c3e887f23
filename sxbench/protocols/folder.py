"""The ``folder`` protocol: the user's own images.

Two layouts:

* a directory with ``content/`` and ``style/`` subfolders: every content is paired with every style;
* a CSV manifest (a ``.csv`` file, or ``manifest.csv`` inside the directory) with columns ``content`` and
  ``style`` (paths relative to the manifest), and optional ``target``, ``pair_id``, ``split``, ``level``,
  ``family``.

Every image is read once up front. A file that cannot be read gives one error line (in
``input_errors`` and the log) naming it and the fix; pairs that use it are dropped and the rest run.
"""

from __future__ import annotations

import csv
import logging
from functools import lru_cache
from pathlib import Path

from PIL import Image

from sxbench.imageio import ImageLoadError, fit, load_image
from sxbench.interfaces import PairSpec, Protocol, ProtocolSpec

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
METRICS = ("content_ssim", "content_edge_f1", "style_color_swd", "style_gram")
TARGET_METRICS = ("target_psnr", "target_ssim", "target_detail", "target_color_swd")


class FolderProtocol(Protocol):
    def __init__(self, root: str | Path, *, resolution: int = 256, seeds: tuple[int, ...] = (0,),
                 resize_policy: str = "crop") -> None:
        root = Path(root).expanduser()
        if root.is_file() and root.suffix.lower() == ".csv":
            rows, base = self._read_manifest(root), root.parent
        elif root.is_dir() and (root / "manifest.csv").is_file():
            rows, base = self._read_manifest(root / "manifest.csv"), root
        elif root.is_dir() and (root / "content").is_dir() and (root / "style").is_dir():
            rows, base = self._grid(root), root
        else:
            raise FileNotFoundError(
                f"{root}: not a protocol folder; give a directory with content/ and style/ subfolders, a directory "
                "holding manifest.csv, or a .csv manifest with columns content,style[,target]"
            )
        self.resolution = resolution
        self.resize_policy = resize_policy
        self.input_errors: list[str] = []
        self._images: dict[str, Image.Image] = {}
        self._paths: dict[str, Path] = {}
        bad: set[str] = set()
        for key in sorted({row[c] for row in rows for c in ("content", "style", "target") if row.get(c)}):
            path = (base / key) if not Path(key).is_absolute() else Path(key)
            try:
                self._images[key] = fit(load_image(path), resolution, resize_policy)
                self._paths[key] = path
            except ImageLoadError as exc:
                self.input_errors.append(str(exc))
                log.error("%s", exc)
                bad.add(key)
        pairs, self._targets, pair_ids = [], {}, set()
        for i, row in enumerate(rows):
            used = [row[c] for c in ("content", "style", "target") if row.get(c)]
            if any(u in bad for u in used):
                continue
            pid = row.get("pair_id") or f"{Path(row['content']).stem}__{Path(row['style']).stem}"
            if pid in pair_ids:
                pid = f"{pid}__{i}"
            pair_ids.add(pid)
            if row.get("target"):
                self._targets[pid] = row["target"]
            pairs.append(
                PairSpec(
                    pair_id=pid,
                    content_id=row["content"],
                    style_id=row["style"],
                    split=row.get("split") or "all",
                    level=row.get("level") or "none",
                    family=row.get("family") or "none",
                    has_target=bool(row.get("target")),
                )
            )
        has_targets = any(p.has_target for p in pairs)
        self.spec = ProtocolSpec(
            name="folder",
            version="1",
            resolution=resolution,
            pairs=tuple(pairs),
            seeds=tuple(seeds),
            metrics=METRICS + (TARGET_METRICS if has_targets else ()),
            resize_policy=resize_policy,
            description=f"User images from {root}.",
            params={"root": str(root.resolve()), "resolution": resolution, "resize_policy": resize_policy},
        )
        self._get = lru_cache(maxsize=None)(lambda key: self._images[key])

    @staticmethod
    def _read_manifest(path: Path) -> list[dict[str, str]]:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"content", "style"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(
                    f"{path}: manifest lacks column(s) {', '.join(sorted(missing))}; the header must include "
                    "content,style and may include target,pair_id,split,level,family"
                )
            return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]

    @staticmethod
    def _grid(root: Path) -> list[dict[str, str]]:
        def images(d: Path) -> list[str]:
            return sorted(
                str(p.relative_to(root)) for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )

        contents, styles = images(root / "content"), images(root / "style")
        if not contents or not styles:
            raise FileNotFoundError(f"{root}: content/ and style/ must each hold at least one image ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return [{"content": c, "style": s} for c in contents for s in styles]

    def path(self, image_id: str) -> Path:
        """Source file of a content, style or target identifier."""
        return self._paths[image_id]

    def content(self, content_id: str) -> Image.Image:
        return self._get(content_id)

    def style(self, style_id: str) -> Image.Image:
        return self._get(style_id)

    def target(self, pair_id: str) -> Image.Image | None:
        key = self._targets.get(pair_id)
        return self._get(key) if key else None


def folder(root: str | Path, resolution: int = 256, seeds: tuple[int, ...] = (0,), resize_policy: str = "crop") -> FolderProtocol:
    """Your own images; see the module docstring for the layouts."""
    return FolderProtocol(root, resolution=resolution, seeds=seeds, resize_policy=resize_policy)


PAPER_METRICS = ("clip_content", "dino_content", "csd_style", "dreamsim_style", "aesthetic", "vlm_semantic")


class PaperProtocol(FolderProtocol):
    """The StyleExpert paper's evaluation on your images: every style in ``style/`` (the held-out styles) with
    ``pairs_per_style`` contents drawn from ``content/`` (seeded, without replacement where possible), two seeds,
    the paper's six metrics (PAPER.md §5: CLIP and DINO vs content, CSD and DreamSim vs style, LAION aesthetic,
    the VLM semantic judge). Metrics whose backbone or implementation is missing are listed as not run."""

    def __init__(self, root: str | Path, *, resolution: int = 1024, seeds: tuple[int, ...] = (0, 1),
                 pairs_per_style: int = 50, seed: int = 0, resize_policy: str = "crop") -> None:
        self.pairs_per_style, self.draw_seed = pairs_per_style, seed
        super().__init__(root, resolution=resolution, seeds=seeds, resize_policy=resize_policy)
        self.spec = ProtocolSpec(
            name="paper", version="1", resolution=resolution,
            pairs=tuple(PairSpec(p.pair_id, p.content_id, p.style_id, split="unseen", level=p.level,
                                 family=p.family, has_target=p.has_target) for p in self.spec.pairs),
            seeds=tuple(seeds), metrics=PAPER_METRICS, resize_policy=resize_policy,
            description=f"The paper's protocol on {root}: each held-out style × {pairs_per_style} contents × "
                        f"{len(seeds)} seeds.",
            params=self.spec.params | {"pairs_per_style": pairs_per_style, "seed": seed},
        )

    def _grid(self, root: Path) -> list[dict[str, str]]:
        import numpy as np

        rows = FolderProtocol._grid(root)
        contents = sorted({r["content"] for r in rows})
        styles = sorted({r["style"] for r in rows})
        rng = np.random.default_rng(self.draw_seed)
        out = []
        for s in styles:
            n = self.pairs_per_style
            picks = rng.choice(len(contents), size=n, replace=len(contents) < n)
            out += [{"content": contents[i], "style": s, "pair_id": f"{Path(contents[i]).stem}__{Path(s).stem}__{j}"}
                    for j, i in enumerate(picks)]
        return out


def paper(root: str | Path, resolution: int = 1024, seeds: tuple[int, ...] = (0, 1), pairs_per_style: int = 50,
          seed: int = 0, resize_policy: str = "crop") -> PaperProtocol:
    """The paper's evaluation protocol on your images (``content/``, ``style/`` = held-out styles)."""
    return PaperProtocol(root, resolution=resolution, seeds=seeds, pairs_per_style=pairs_per_style, seed=seed,
                         resize_policy=resize_policy)
