"""The ``folder`` protocol: the user's own images.

Two layouts:

* a directory with ``content/`` and ``style/`` subfolders: every content is paired with every style (hidden
  entries are skipped; other names without an image suffix are listed in one warning);
* a CSV manifest (a ``.csv`` file, or ``manifest.csv`` inside the directory) with columns ``content`` and
  ``style`` (paths relative to the manifest), and optional ``target``, ``pair_id``, ``split``, ``level``,
  ``family``; other columns are named in a warning and ignored.

Every image is read once up front. A file that cannot be used (empty, not an image, truncated, a directory
or broken link named like an image, a decompression bomb) gives one error line (in ``input_errors`` and the
log) naming it and the fix; pairs that use it are dropped and the rest run. A suspicious but usable file (a
tiny image, extra animation frames) gives one warning line in the log and is used. Each pair's ``inputs`` is
a digest of its files' bytes, so editing a file regenerates its pairs and moving the folder does not.
"""

from __future__ import annotations

import csv
import logging
from functools import lru_cache
from pathlib import Path

from PIL import Image

from sxbench.imageio import ImageLoadError, read_input
from sxbench.interfaces import PairSpec, Protocol, ProtocolSpec
from sxbench.records import file_sha256, stable_hash

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
METRICS = ("content_ssim", "content_edge_f1", "style_color_swd", "style_gram")
TARGET_METRICS = ("target_psnr", "target_ssim", "target_detail", "target_color_swd")
MANIFEST_COLUMNS = ("content", "style", "target", "pair_id", "split", "level", "family")
ROLES = ("content", "style", "target")


class FolderProtocol(Protocol):
    def __init__(self, root: str | Path, *, resolution: int = 256, seeds: tuple[int, ...] = (0,),
                 resize_policy: str = "crop") -> None:
        root = Path(root).expanduser()
        manifest = root if root.is_file() and root.suffix.lower() == ".csv" else root / "manifest.csv"
        if manifest.is_file():
            rows, base = self._read_manifest(manifest), manifest.parent
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
        self._sha256: dict[str, str] = {}
        for key in sorted({row[c] for row in rows for c in ROLES if row.get(c)}):
            self._read(key, (base / key) if not Path(key).is_absolute() else Path(key))
        self._targets: dict[str, str] = {}
        pairs = self._pairs(rows, manifest)
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

    def _pairs(self, rows: list[dict[str, str]], manifest: Path) -> list[PairSpec]:
        """One pair per row whose inputs all loaded (rows lacking content or style get an error line); fills
        ``_targets``."""
        pairs, pair_ids = [], set()
        for i, row in enumerate(rows):
            if not any(row.values()):
                continue  # a spreadsheet's trailing empty row
            if not row.get("content") or not row.get("style"):
                self._error(f"{manifest}: row {i + 1} after the header has no "
                            f"{'content' if not row.get('content') else 'style'} path; fill it in or remove the row")
                continue
            if any(row.get(c) and row[c] not in self._images for c in ROLES):
                continue  # an input that cannot be used; its error line is already in input_errors
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
                    inputs=stable_hash([self._sha256[row[c]] if row.get(c) else "" for c in ROLES], 16),
                )
            )
        return pairs

    def _read(self, key: str, path: Path) -> None:
        """Load one input file at the protocol's resolution and hash its bytes; log its warnings, or record
        its one error line."""
        try:
            image, notes = read_input(path, self.resolution, self.resize_policy)
            digest = file_sha256(path)
        except ImageLoadError as exc:
            self._error(str(exc))
            return
        except OSError as exc:  # hashing after a good read: the file was removed or changed meanwhile
            self._error(f"{path}: cannot be read ({exc.__class__.__name__}: {exc}); fix it or remove it")
            return
        self._images[key], self._sha256[key], self._paths[key] = image, digest, path
        for note in notes:
            log.warning("%s", note)

    def _error(self, line: str) -> None:
        """Record one input error line and log it."""
        self.input_errors.append(line)
        log.error("%s", line)

    @staticmethod
    def _read_manifest(path: Path) -> list[dict[str, str]]:
        accepted = ",".join(MANIFEST_COLUMNS)
        try:
            with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's byte-order mark
                reader = csv.DictReader(fh)
                columns = [c.strip() for c in reader.fieldnames or ()]
                rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ValueError(f"{path}: not a UTF-8 CSV file ({exc}); save it as CSV (UTF-8) with the header "
                             f"{accepted}") from None
        missing = {"content", "style"} - set(columns)
        if missing:
            raise ValueError(
                f"{path}: manifest lacks column(s) {', '.join(sorted(missing))}; the header must include "
                "content,style and may include target,pair_id,split,level,family"
            )
        unknown = [c for c in columns if c not in MANIFEST_COLUMNS]
        if unknown:
            log.warning("%s: ignored unknown column(s) %s; the accepted columns are %s", path, ", ".join(unknown),
                        accepted)
        return rows

    @staticmethod
    def _grid(root: Path) -> list[dict[str, str]]:
        contents, styles = _images_in(root, "content"), _images_in(root, "style")
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


def _images_in(root: Path, sub: str) -> list[str]:
    """Paths, relative to ``root``, of the entries of ``root/sub`` named like images, whatever they are (a
    directory or broken link named ``x.png`` is listed, and reported when read); other names are given in one
    warning. Hidden entries (``.DS_Store``, macOS's ``._x.jpg`` resource forks) are skipped."""
    entries = sorted(p for p in (root / sub).iterdir() if not p.name.startswith("."))
    named = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
    other = [p.name for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
    if other:
        log.warning("%s: ignored %d entr%s without an image suffix (%s); accepted: %s", root / sub, len(other),
                    "y" if len(other) == 1 else "ies", ", ".join(other[:5]) + (", ..." if len(other) > 5 else ""),
                    " ".join(sorted(IMAGE_SUFFIXES)))
    return [str(p.relative_to(root)) for p in named]


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
                                 family=p.family, has_target=p.has_target, inputs=p.inputs)
                        for p in self.spec.pairs),
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
