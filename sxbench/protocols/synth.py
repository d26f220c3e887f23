"""The ``synth`` protocol: procedural scenes, 20 style families, ground-truth stylized targets.

Triplets follow the paper's dataset structure: for a pair (content ``c``, style ``s``), the style reference
is ``s`` applied to a *different* content (a reference scene of its own) and the target is ``s`` applied
to ``c``.

Splits:

* ``seen``: the 16 non-held-out families with every parameter's ``u`` drawn from ``[0, 0.7]``;
* ``unseen``: the 4 held-out families (one per level: ``gradient_map``, ``canvas``, ``stone``,
  ``pixel_art``) with any parameters, plus the seen families with the primary parameter drawn from the
  held-out range ``[0.8, 1.0]``.

Everything is a deterministic function of the preset and the seed namespace; ``version`` changes whenever
the images change.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from sxbench.imageio import array_to_pil
from sxbench.interfaces import PairSpec, Protocol, ProtocolSpec
from sxbench.protocols import synthgen
from sxbench.protocols.splits import HELD_OUT_RANGE, SEEN_RANGE, TrainingRecord, training_ranges
from sxbench.protocols.synthgen import FAMILIES, LEVELS
from sxbench.records import pixel_digest

log = logging.getLogger(__name__)

VERSION = "1"
SYNTH_METRICS = (
    "content_ssim",
    "content_edge_f1",
    "style_color_swd",
    "style_gram",
    "target_psnr",
    "target_ssim",
    "target_detail",
    "target_color_swd",
    # pretrained backbones (`sxbench weights fetch default`); listed as "not run" where the weights are missing
    "dino_content",
    "dino_structure",
    "vgg_content_loss",
    "vgg_gram_style",
    "stlpips_content",
    "fid",
    "kid",
    "artfid_st",
)
# Seed namespaces keep contents, reference scenes and style patterns independent.
_CONTENT_NS, _REFERENCE_NS, _STYLE_NS = 1_000_003, 2_000_003, 3_000_017


@dataclass(frozen=True)
class StyleSpec:
    """One concrete style: a family with parameter values and a pattern seed."""

    style_id: str
    """``{family}-{index:02d}``."""
    family: str
    """Family name in ``synthgen.FAMILIES``."""
    level: str
    """Semantic level of the family."""
    split: str
    """``seen`` or ``unseen``."""
    u: dict[str, float]
    """Parameter values in ``[0, 1]``."""
    seed: int
    """Pattern seed (noise fields, tile centres) of targets; the reference uses ``seed + 1``."""
    reference_seed: int
    """Seed of the reference scene the style is shown on."""


def make_styles(seen_per_family: int, unseen_per_family: int, held_out_per_family: int, seed: int = 0) -> list[StyleSpec]:
    """Concrete styles for every family, deterministic in ``seed``."""
    rng = np.random.Generator(np.random.PCG64(seed + _STYLE_NS))
    styles = []
    for fi, fam in enumerate(FAMILIES.values()):
        plan: list[tuple[str, tuple[float, float]]]
        if fam.held_out:
            plan = [("unseen", (0.0, 1.0))] * held_out_per_family
        else:
            plan = [("seen", SEEN_RANGE)] * seen_per_family + [("unseen", HELD_OUT_RANGE)] * unseen_per_family
        for k, (split, primary_range) in enumerate(plan):
            u = {}
            for pi, (pname, _, _) in enumerate(fam.params):
                lo, hi = primary_range if pi == 0 else (SEEN_RANGE if split == "seen" and not fam.held_out else (0.0, 1.0))
                u[pname] = float(rng.uniform(lo, hi))
            styles.append(
                StyleSpec(
                    style_id=f"{fam.name}-{k:02d}",
                    family=fam.name,
                    level=fam.level,
                    split=split,
                    u=u,
                    seed=int(rng.integers(2**31)),
                    reference_seed=_REFERENCE_NS + fi * 100 + k,
                )
            )
    return styles


class SynthProtocol(Protocol):
    """Procedural protocol; images are generated on first use and cached."""

    def __init__(
        self,
        name: str,
        *,
        resolution: int,
        n_contents: int,
        contents_per_style: int,
        seen_per_family: int,
        unseen_per_family: int,
        held_out_per_family: int,
        families: tuple[str, ...] | None = None,
        seeds: tuple[int, ...] = (0,),
        seed: int = 0,
    ) -> None:
        styles = make_styles(seen_per_family, unseen_per_family, held_out_per_family, seed)
        if families is not None:
            styles = [s for s in styles if s.family in families]
        self.styles = {s.style_id: s for s in styles}
        self._content_seeds = {f"c{i:03d}": seed * 7919 + _CONTENT_NS + i for i in range(n_contents)}
        content_ids = list(self._content_seeds)
        pairs = []
        for si, st in enumerate(styles):
            for j in range(contents_per_style):
                cid = content_ids[(si * contents_per_style + j * 5) % len(content_ids)]
                pairs.append(
                    PairSpec(
                        pair_id=f"{cid}__{st.style_id}",
                        content_id=cid,
                        style_id=st.style_id,
                        split=st.split,
                        level=st.level,
                        family=st.family,
                        has_target=True,
                    )
                )
        self._pairs = {p.pair_id: p for p in pairs}
        self.input_errors = []
        self.spec = ProtocolSpec(
            name=name,
            version=VERSION,
            resolution=resolution,
            pairs=tuple(pairs),
            seeds=tuple(seeds),
            metrics=SYNTH_METRICS,
            resize_policy="crop",
            description=(
                "Procedural scenes stylized by 20 parametric style families over four levels "
                "(color, texture, material, stroke); the style reference is the style on another scene, "
                "the target the style on this one. Unseen: 4 held-out families plus the held-out range "
                f"u in {list(HELD_OUT_RANGE)} of each seen family's primary parameter."
            ),
            params={
                "resolution": resolution,
                "n_contents": n_contents,
                "contents_per_style": contents_per_style,
                "seen_per_family": seen_per_family,
                "unseen_per_family": unseen_per_family,
                "held_out_per_family": held_out_per_family,
                "families": list(families) if families else None,
                "seed": seed,
            },
        )
        self._scene = lru_cache(maxsize=None)(self._make_scene)
        self._reference = lru_cache(maxsize=None)(self._make_reference)
        self._target = lru_cache(maxsize=4096)(self._make_target)

    def _make_scene(self, scene_seed: int) -> synthgen.Scene:
        return synthgen.make_scene(scene_seed, self.spec.resolution)

    def _make_reference(self, style_id: str) -> Image.Image:
        st = self.styles[style_id]
        scene = self._scene(st.reference_seed)
        # another instance of the pattern (noise, tile centres): a method cannot win by copying pixels
        return array_to_pil(synthgen.apply_style(scene.image, st.family, st.u, st.seed + 1))

    def _make_target(self, pair_id: str) -> Image.Image:
        pair = self._pairs[pair_id]
        st = self.styles[pair.style_id]
        scene = self._scene(self._content_seeds[pair.content_id])
        return array_to_pil(synthgen.apply_style(scene.image, st.family, st.u, st.seed))

    def scene(self, content_id: str) -> synthgen.Scene:
        """The content scene with its masks and edges."""
        return self._scene(self._content_seeds[content_id])

    def content(self, content_id: str) -> Image.Image:
        return array_to_pil(self.scene(content_id).image)

    def style(self, style_id: str) -> Image.Image:
        return self._reference(style_id)

    def target(self, pair_id: str) -> Image.Image:
        return self._target(pair_id)


def synth(resolution: int = 128, seeds: tuple[int, ...] = (0,), seed: int = 0) -> SynthProtocol:
    """The default protocol: 56 styles (20 families) × 4 contents = 224 pairs, 128 × 128.

    Seen: 16 families × 2 styles; unseen: 16 families × 1 held-out-range style + 4 held-out families × 2.
    """
    return SynthProtocol(
        "synth",
        resolution=resolution,
        n_contents=40,
        contents_per_style=4,
        seen_per_family=2,
        unseen_per_family=1,
        held_out_per_family=2,
        seeds=seeds,
        seed=seed,
    )


def synth_lite(resolution: int = 128, seeds: tuple[int, ...] = (0,), seed: int = 0) -> SynthProtocol:
    """``synth``'s 56 styles (both splits, all four levels, every family) with one content each: 56 pairs.

    README command 1 runs it: with the pretrained metrics, full ``synth`` takes longer than a first run
    should on 2 CPU cores.
    """
    return SynthProtocol(
        "synth-lite",
        resolution=resolution,
        n_contents=40,
        contents_per_style=1,
        seen_per_family=2,
        unseen_per_family=1,
        held_out_per_family=2,
        seeds=seeds,
        seed=seed,
    )


def synth_smoke(resolution: int = 64, seeds: tuple[int, ...] = (0,), seed: int = 0) -> SynthProtocol:
    """A handful of pairs for tests: one seen and one unseen style at each level, 64 × 64."""
    fams = ("duotone", "gradient_map", "stripes", "canvas", "wood", "stone", "hatching", "pixel_art")
    return SynthProtocol(
        "synth-smoke",
        resolution=resolution,
        n_contents=4,
        contents_per_style=1,
        seen_per_family=1,
        unseen_per_family=0,
        held_out_per_family=1,
        families=fams,
        seeds=seeds,
        seed=seed,
    )


_TRAINING_NS = 5_000_011


def training_scene_seeds(index: int, seed: int = 0) -> tuple[int, int]:
    """Scene seeds of triplet ``index`` written by ``write_triplets(..., seed=seed)``: its content and the scene
    its style reference is drawn on (a namespace apart from the benchmark's contents and reference scenes)."""
    content = seed * 1_000_000 + _TRAINING_NS + 2 * index
    return content, content + 1


TRAINING_RECORD = "training_data.json"
"""Written beside a triplet folder's manifest: a ``splits.TrainingRecord`` of what the triplets cover."""
IMAGE_DIGESTS = "image_digests.txt"
"""One ``records.pixel_digest`` per line: every image of a training set (the leakage test reads it)."""


def write_triplets(out: Path, n: int, split: str, *, resolution: int = 128, seed: int = 0, progress: bool = True) -> Path:
    """Write ``n`` training triplets of ``split`` (``seen``, ``unseen`` or ``all``) under ``out``.

    Layout: ``content/``, ``style/``, ``target/``, ``masks/`` (class masks, PNG ``L``), ``edges/`` and a
    ``manifest.csv`` readable by the ``folder`` protocol (columns ``pair_id, content, style, target, split,
    level, family, params``). Styles are sampled afresh (seed-dependent) so the set is larger than the
    benchmark's; contents use a seed namespace disjoint from the benchmark's. Seen triplets draw from
    ``splits.training_ranges()`` (the seen range, kept apart from the held-out one on circles and after
    rounding). ``resolution`` should be the benchmark's (128): a model that works smaller resizes them on the
    way in as it resizes the benchmark's images, so pixel-scale parameters mean the same at its input.

    Beside the manifest: ``training_data.json`` (the ``u`` ranges drawn from and the render resolution) and
    ``image_digests.txt`` (a pixel digest of every image written), which trained checkpoints carry.

    Returns:
        The manifest path.
    """
    from tqdm.auto import tqdm

    if split not in ("seen", "unseen", "all"):
        raise ValueError(f"split must be seen, unseen or all, got {split!r}")
    rng = np.random.Generator(np.random.PCG64(seed + 97))
    fams = [f for f in FAMILIES.values() if split == "all" or (f.held_out == (split == "unseen"))]
    seen_ranges = training_ranges([f.name for f in fams if not f.held_out])
    covered: dict[str, dict[str, tuple[float, float]]] = {}
    digests: list[str] = []
    for sub in ("content", "style", "target", "masks", "edges"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["pair_id", "content", "style", "target", "split", "level", "family", "params"])
        for i in tqdm(range(n), desc=f"synth {split}", disable=not progress):
            fam = fams[int(rng.integers(len(fams)))]
            if fam.held_out:
                pair_split, primary = "unseen", (0.0, 1.0)
            elif split == "unseen" or (split == "all" and rng.random() < 0.2):
                pair_split, primary = "unseen", HELD_OUT_RANGE
            else:
                pair_split, primary = "seen", seen_ranges[fam.name][fam.params[0][0]]
            ranges = {p: (primary if k == 0 else ((0.0, 1.0) if pair_split == "unseen" else seen_ranges[fam.name][p]))
                      for k, (p, _, _) in enumerate(fam.params)}
            u = {p: float(rng.uniform(*ranges[p])) for p in ranges}
            cover = covered.setdefault(fam.name, {})
            for p, (lo, hi) in ranges.items():
                c = cover.get(p, (lo, hi))
                cover[p] = (min(c[0], lo), max(c[1], hi))
            style_seed = int(rng.integers(2**31))
            scene_seed, ref_seed = training_scene_seeds(i, seed)
            scene = synthgen.make_scene(scene_seed, resolution)
            ref = synthgen.make_scene(ref_seed, resolution)
            pid = f"t{i:06d}"
            images = {"content": array_to_pil(scene.image),
                      "style": array_to_pil(synthgen.apply_style(ref.image, fam.name, u, style_seed + 1)),
                      "target": array_to_pil(synthgen.apply_style(scene.image, fam.name, u, style_seed))}
            for sub, im in images.items():
                im.save(out / sub / f"{pid}.png")
                digests.append(pixel_digest(im))
            Image.fromarray(scene.classes).save(out / "masks" / f"{pid}.png")
            Image.fromarray(scene.edges.astype(np.uint8) * 255).save(out / "edges" / f"{pid}.png")
            w.writerow([pid, f"content/{pid}.png", f"style/{pid}.png", f"target/{pid}.png", pair_split, fam.level,
                        fam.name, json.dumps({"u": u, "seed": style_seed})])
    (out / IMAGE_DIGESTS).write_text("\n".join(digests) + "\n")
    record = TrainingRecord(render_resolution=resolution, model_resolution=resolution, ranges=covered,
                            image_digests=IMAGE_DIGESTS)
    (out / TRAINING_RECORD).write_text(json.dumps(record.to_json(), indent=1))
    return manifest


__all__ = ["HELD_OUT_RANGE", "IMAGE_DIGESTS", "LEVELS", "SEEN_RANGE", "TRAINING_RECORD", "SynthProtocol", "StyleSpec", "make_styles", "synth", "synth_smoke", "training_scene_seeds",
           "write_triplets"]
