"""Seen and unseen, at the model's input: what a trained method may be trained on, and the check that it was.

The ``synth`` protocol draws its *seen* styles with every parameter's ``u`` in ``SEEN_RANGE`` and its *unseen*
styles from held-out families or with the primary parameter in ``HELD_OUT_RANGE``. That split holds for a trained
method only where the method's training data, as the model sees them, lie on the same side of it. Three things
break that silently, and this module handles each:

* **pixel scale**: a period of 8 px rendered at 128² is 4 px at a model that works at 64². Training triplets are
  rendered at the benchmark's resolution and resized along the path the method's plugin takes
  (``TrainingRecord.render_resolution``, ``model_resolution``); every pixel-scale parameter is compared at the
  model's input (value × model / render resolution).
* **circular parameters** (hues, angles, light directions): the held-out top of a hue range wraps round to its
  seen bottom (``u`` 0.964 lies 0.036 from 0.0). The training range of a circular primary keeps the same gap to
  the held-out range on both sides of the circle as on the line.
* **rounded parameters** (level counts, tile counts): part of a held-out range can round onto a seen value
  (posterize levels 2.6 → 3). The training range of a rounded primary stops where its rounded values would meet
  the held-out range's.

``training_ranges()`` gives the ``u`` ranges that hold by construction; training data generators
(``write_triplets``, the ``adain`` decoder's) draw from them and record them with the resolutions in the
checkpoint (``TrainingRecord``). ``check_styles`` then reads a record and a protocol's styles and lists every seen
style outside the training ranges and every unseen style inside them (``tests/test_splits.py`` runs it on every
committed checkpoint).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from sxbench.protocols.synthgen import FAMILIES

SEEN_RANGE = (0.0, 0.7)
HELD_OUT_RANGE = (0.8, 1.0)
GAP = HELD_OUT_RANGE[0] - SEEN_RANGE[1]
"""The gap in ``u`` between the seen and the held-out range on the line; kept on the circle too."""

PX, ROUND, PX_ROUND = "px", "round", "px_round"
"""Kinds of parameter: a length in pixels; a count the generator rounds (``int(round(v))``); a pixel length it
rounds (line weight, block size). A circular parameter's kind is its period (``360.0`` for a light direction)."""

KINDS: dict[str, dict[str, Any]] = {
    "duotone": {"hue": 1.0},
    "posterize": {"levels": ROUND},
    "hue_rotate": {"angle": 360.0},
    "gradient_map": {"hue": 1.0},
    "stripes": {"period": PX, "angle": 180.0},
    "halftone": {"spacing": PX, "angle": 90.0},
    "grain": {"scale": PX},
    "checker": {"cell": PX, "angle": 90.0},
    "canvas": {"period": PX},
    "wood": {"light": 360.0},
    "marble": {"light": 360.0},
    "metal": {"brush": PX, "light": 360.0},
    "fabric": {"thread": PX, "light": 360.0},
    "stone": {"cells": ROUND, "light": 360.0},
    "hatching": {"spacing": PX, "angle": 180.0, "ink_hue": 1.0},
    "pointillism": {"radius": PX},
    "mosaic": {"tiles": ROUND, "grout": PX},
    "ink_outline": {"levels": ROUND, "weight": PX_ROUND, "ink_hue": 1.0},
    "pixel_art": {"block": PX_ROUND, "levels": ROUND},
}
"""Every parameter that is not a plain real number, by family (the rest are plain)."""


def kind(family: str, param: str) -> Any:
    """``None`` (plain), ``PX``, ``ROUND``, ``PX_ROUND`` or a period (circular)."""
    return KINDS.get(family, {}).get(param)


def _physical(family: str, param: str, u: float) -> float:
    lo, hi = next((lo, hi) for name, lo, hi in FAMILIES[family].params if name == param)
    return lo + (hi - lo) * u


def _rounded(v: float) -> int:
    return int(round(v))


def _primary_range(family: str) -> tuple[float, float]:
    """The ``u`` range of ``family``'s primary parameter that stays apart from its held-out range at the model's
    input (on the circle for a circular primary; after rounding for a rounded one)."""
    fam = FAMILIES[family]
    name, lo, hi = fam.params[0]
    k = kind(family, name)
    u_lo, u_hi = SEEN_RANGE
    if isinstance(k, float):  # circular: the wrap-round gap from the held-out top to the seen bottom
        span = abs(hi - lo)
        wrap = ((lo - hi) % k) / span  # from u = 1 round to u = 0, in u units
        if wrap < GAP:
            u_lo += GAP - wrap
    elif k in (ROUND, PX_ROUND):  # rounded: no rounded value in common with the held-out range
        held = {_rounded(_physical(family, name, u / 1000)) for u in range(int(HELD_OUT_RANGE[0] * 1000), 1001)}
        # the seen end next to the held-out range moves in to the rounding boundary of the nearest free value
        step = 1e-4
        u = u_hi
        while u > u_lo and _rounded(_physical(family, name, u)) in held:
            u -= step
        u_hi = math.floor(u * 1000) / 1000
    return (u_lo, u_hi)


def training_ranges(families: Iterable[str] | None = None) -> dict[str, dict[str, tuple[float, float]]]:
    """``u`` ranges a trained method's seen training data draw from, by family and parameter: ``SEEN_RANGE``, with
    the primary narrowed where a circle or rounding would bring it onto the held-out range. Held-out families are
    absent."""
    names = families if families is not None else [f.name for f in FAMILIES.values() if not f.held_out]
    out = {}
    for family in names:
        fam = FAMILIES[family]
        if fam.held_out:
            raise ValueError(f"{family} is a held-out family: nothing of it is seen in training")
        out[family] = {name: (_primary_range(family) if i == 0 else SEEN_RANGE) for i, (name, _, _) in enumerate(fam.params)}
    return out


@dataclass
class TrainingRecord:
    """What a trained method saw of the ``synth`` generator, as stored in its checkpoint (``training_data``)."""

    render_resolution: int
    """Side in px the training images were rendered at."""
    model_resolution: float
    """Side in px of what the model saw of them (after the plugin's resize or a crop without resize: the render
    resolution)."""
    ranges: dict[str, dict[str, tuple[float, float]]]
    """``u`` ranges by family and parameter (``training_ranges()``)."""
    benchmark_input: str = "resize"
    """How the method takes a benchmark image: ``resize`` to ``model_resolution`` (StyleExpert's plugin), or
    ``native`` (fully convolutional: at the benchmark's own resolution; trained on crops without resizing)."""
    generator: str = "synth"
    image_digests: str | None = None
    """File (beside the checkpoint's config) with one pixel digest per training image (``records.pixel_digest``)."""
    photos: list[dict[str, str]] = field(default_factory=list)
    """Bundled photographs trained on: ``{"name", "sha256"}`` of each file."""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ranges"] = {f: {p: list(r) for p, r in ps.items()} for f, ps in self.ranges.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrainingRecord":
        d = dict(d)
        d["ranges"] = {f: {p: tuple(r) for p, r in ps.items()} for f, ps in d["ranges"].items()}
        return cls(**d)


def at_input(family: str, param: str, value: float, scale: float) -> float:
    """A parameter's physical ``value`` as the model sees it when the image is resized by ``scale``."""
    k = kind(family, param)
    if k == PX:
        return value * scale
    if k == PX_ROUND:
        return _rounded(value) * scale
    if k == ROUND:
        return float(_rounded(value))
    return value


def inside(family: str, param: str, value: float, lo: float, hi: float) -> bool:
    """Whether ``value`` lies in the range ``lo..hi`` (both at the model's input, rounded kinds already rounded;
    on the circle for a circular parameter)."""
    k = kind(family, param)
    a, b = min(lo, hi), max(lo, hi)
    if isinstance(k, float):
        return (value - a) % k <= (b - a) + 1e-9
    return a - 1e-9 <= value <= b + 1e-9


def _rounded_range(family: str, param: str, u_lo: float, u_hi: float, scale: float) -> tuple[float, float]:
    """The range of a parameter at the model's input, over ``u`` in ``u_lo..u_hi`` (rounded kinds: the span of
    the values it rounds to)."""
    a, b = _physical(family, param, u_lo), _physical(family, param, u_hi)
    k = kind(family, param)
    if k in (ROUND, PX_ROUND):
        lo, hi = min(a, b), max(a, b)
        vals = [_rounded(lo + (hi - lo) * i / 1000) for i in range(1001)]
        r = (min(vals), max(vals))
        return (r[0] * scale, r[1] * scale) if k == PX_ROUND else (float(r[0]), float(r[1]))
    return at_input(family, param, a, scale), at_input(family, param, b, scale)


def check_styles(record: TrainingRecord, styles: Iterable[Any], benchmark_resolution: int) -> list[str]:
    """Every way ``styles`` (``synth.StyleSpec``) rendered at ``benchmark_resolution`` break the split for a method
    trained as ``record`` says: a seen style with a parameter outside the training ranges, an unseen style of a
    trained family whose primary parameter falls inside them, or a held-out family in training. Pixel-scale
    parameters are compared at the model's input on both sides."""
    model_res = record.model_resolution if record.benchmark_input == "resize" else benchmark_resolution
    bench_scale = model_res / benchmark_resolution
    train_scale = record.model_resolution / record.render_resolution
    problems = []
    for fam_name in record.ranges:
        if FAMILIES[fam_name].held_out:
            problems.append(f"{fam_name}: a held-out family is in the training data")
    for st in styles:
        fam = FAMILIES[st.family]
        ranges = record.ranges.get(st.family)
        if ranges is None:
            if st.split == "seen":
                problems.append(f"{st.style_id}: seen, but its family is not in the training data")
            continue
        physical = fam.resolve(st.u)
        names = [name for name, _, _ in fam.params] if st.split == "seen" else [fam.params[0][0]]
        for name in names:
            v = at_input(st.family, name, physical[name], bench_scale)
            lo, hi = _rounded_range(st.family, name, *ranges[name], train_scale)
            ok = inside(st.family, name, v, lo, hi)
            if st.split == "seen" and not ok:
                problems.append(f"{st.style_id}: seen, but {name} = {v:.4g} at the model's input is outside the "
                                f"training range {min(lo, hi):.4g}..{max(lo, hi):.4g}")
            if st.split != "seen" and ok:
                problems.append(f"{st.style_id}: unseen, but {name} = {v:.4g} at the model's input is inside the "
                                f"training range {min(lo, hi):.4g}..{max(lo, hi):.4g}")
    return problems


def circular_gap(family: str, param: str, ranges: tuple[float, float]) -> float:
    """Distance in ``u`` on the circle between the training range ``ranges`` and ``HELD_OUT_RANGE`` of a circular
    parameter (both sides; the smaller)."""
    k = kind(family, param)
    if not isinstance(k, float):
        raise ValueError(f"{family}.{param} is not circular")
    _, lo, hi = next(p for p in FAMILIES[family].params if p[0] == param)
    span = abs(hi - lo)
    period_u = k / span
    t_lo, t_hi = ranges
    h_lo, h_hi = HELD_OUT_RANGE
    return min((h_lo - t_hi) % period_u, (t_lo - h_hi) % period_u)


__all__ = ["GAP", "HELD_OUT_RANGE", "KINDS", "SEEN_RANGE", "TrainingRecord", "at_input", "check_styles", "circular_gap",
           "inside", "kind", "training_ranges"]
