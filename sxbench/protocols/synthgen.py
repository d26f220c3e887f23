"""Deterministic procedural content scenes and style families (numpy only, no I/O).

Content: 1–4 anti-aliased objects of seven classes (circle, box, triangle, star, ring, ellipse, cross)
composited over one of four background kinds, with an instance mask, a class mask and an edge map.

Styles: 20 families over four semantic levels. Each family maps an RGB image to its stylized version from
the image alone (luminance, gradients, colours), so the same style can be applied to any content. Every
family has continuous parameters in ``[0, 1]`` (``u`` values) mapped to physical ranges; the first
parameter is the *primary* one whose top range is held out for the unseen split.

All functions take and return ``(H, W, 3)`` float32 arrays in ``[0, 1]``; randomness comes only from
explicit integer seeds.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

Array = np.ndarray

CLASSES = ("circle", "box", "triangle", "star", "ring", "ellipse", "cross")
BACKGROUNDS = ("linear", "radial", "horizon", "clouds")
LEVELS = ("color", "texture", "material", "stroke")


# ----------------------------------------------------------------------------------------------- helpers
def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _grid(size: int, seed: int | None = None) -> tuple[Array, Array]:
    """Pixel coordinates; with ``seed``, shifted by a seeded sub-image offset so that two instances of a
    periodic pattern (a style reference and a target) are out of phase."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    if seed is not None:
        dx, dy = _rng(seed ^ 0x5EED).uniform(0, 64, 2)
        x, y = x + np.float32(dx), y + np.float32(dy)
    return x, y


def _hsv(h: float, s: float, v: float) -> Array:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def luminance(img: Array) -> Array:
    """Rec. 601 luma, ``(H, W)``."""
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


def smooth_noise(size: int, scale: float, rng: np.random.Generator, octaves: int = 3) -> Array:
    """Fractal value noise in ``[0, 1]``, ``(size, size)``; ``scale`` is the coarsest feature size in px."""
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = max(2, int(round(size / max(scale / (2**o), 1.0))))
        coarse = rng.random((cells + 3, cells + 3)).astype(np.float32)
        zoomed = ndimage.zoom(coarse, size / cells, order=3, mode="reflect")[:size, :size]
        out += amp * zoomed
        total += amp
        amp *= 0.5
    out /= total
    lo, hi = out.min(), out.max()
    return (out - lo) / max(hi - lo, 1e-6)


def _shade(height: Array, azimuth: float, strength: float) -> Array:
    """Lambertian shading of a height field lit from ``azimuth`` (radians), ``(H, W)`` around 1."""
    gy, gx = np.gradient(height)
    nx, ny, nz = -gx * strength, -gy * strength, np.ones_like(height)
    norm = np.sqrt(nx**2 + ny**2 + nz**2)
    lx, ly, lz = np.cos(azimuth) * 0.6, np.sin(azimuth) * 0.6, 0.8
    return np.clip((nx * lx + ny * ly + nz * lz) / norm, 0, 1) / 0.8


def _sobel_mag(gray: Array) -> Array:
    return np.hypot(ndimage.sobel(gray, 1), ndimage.sobel(gray, 0)) / 8.0


def _lerp(a: float, b: float, u: float) -> float:
    return a + (b - a) * u


# ----------------------------------------------------------------------------------------------- content
@dataclass(frozen=True)
class Scene:
    """A generated content image and its ground truth."""

    image: Array
    """``(H, W, 3)`` float32 in ``[0, 1]``."""
    instances: Array
    """``(H, W)`` uint8: 0 background, ``i`` the i-th object (painted in order; later objects on top)."""
    classes: Array
    """``(H, W)`` uint8: 0 background, ``1 + CLASSES.index(name)`` for objects."""
    edges: Array
    """``(H, W)`` bool: pixels on an instance boundary."""
    object_classes: tuple[str, ...] = field(default=())
    """Class name of each object, in paint order."""


def _sdf(cls: str, x: Array, y: Array, cx: float, cy: float, r: float, angle: float, aspect: float) -> Array:
    c, s = np.cos(angle), np.sin(angle)
    px, py = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    if cls == "circle":
        return np.hypot(px, py) - r
    if cls == "box":
        qx, qy = np.abs(px) - r, np.abs(py) - r * aspect
        return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
    if cls == "triangle":  # equilateral, circumradius-ish r
        k = np.sqrt(3.0)
        qx, qy = np.abs(px) - r * 0.87, py + r * 0.5
        sw = qx + k * qy > 0
        qx, qy = np.where(sw, (qx - k * qy) / 2, qx), np.where(sw, (-k * qx - qy) / 2, qy)
        qx = qx - np.clip(qx, -2 * r * 0.87, 0)
        return -np.hypot(qx, qy) * np.sign(qy)
    if cls == "star":
        theta = np.arctan2(py, px)
        return np.hypot(px, py) - r * (0.62 + 0.38 * np.cos(5 * theta))
    if cls == "ring":
        return np.abs(np.hypot(px, py) - r * 0.75) - r * 0.25
    if cls == "ellipse":
        a, b = r, r * aspect
        k = np.hypot(px / a, py / b)
        return (k - 1.0) * min(a, b)
    if cls == "cross":
        w = r * 0.33
        d1 = np.maximum(np.abs(px) - r, np.abs(py) - w)
        d2 = np.maximum(np.abs(px) - w, np.abs(py) - r)
        return np.minimum(d1, d2)
    raise ValueError(f"unknown object class {cls!r}")


def _background(kind: str, size: int, rng: np.random.Generator) -> Array:
    x, y = _grid(size)
    h = rng.random()
    c0 = _hsv(h, rng.uniform(0.2, 0.7), rng.uniform(0.3, 0.9))
    c1 = _hsv(h + rng.uniform(0.1, 0.5), rng.uniform(0.2, 0.7), rng.uniform(0.3, 0.95))
    if kind == "linear":
        a = rng.uniform(0, 2 * np.pi)
        t = ((x - size / 2) * np.cos(a) + (y - size / 2) * np.sin(a)) / size + 0.5
    elif kind == "radial":
        cx, cy = rng.uniform(0.2, 0.8, 2) * size
        t = np.hypot(x - cx, y - cy) / size
    elif kind == "horizon":
        t = (y > rng.uniform(0.35, 0.7) * size).astype(np.float32)
        t = ndimage.gaussian_filter(t, 1.0) * 0.85 + 0.15 * y / size
    else:  # clouds
        t = smooth_noise(size, size / 3, rng)
    t = np.clip(t, 0, 1)[..., None]
    return (c0 * (1 - t) + c1 * t).astype(np.float32)


def make_scene(seed: int, size: int = 128) -> Scene:
    """A deterministic content scene for ``seed`` at ``size × size``."""
    rng = _rng(seed)
    img = _background(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], size, rng)
    x, y = _grid(size)
    inst = np.zeros((size, size), np.uint8)
    klass = np.zeros((size, size), np.uint8)
    names = []
    n = int(rng.integers(1, 5))
    for i in range(n):
        cls = CLASSES[rng.integers(len(CLASSES))]
        r = rng.uniform(0.12, 0.28) * size
        cx, cy = rng.uniform(r * 0.7, size - r * 0.7, 2)
        d = _sdf(cls, x, y, cx, cy, r, rng.uniform(0, np.pi), rng.uniform(0.5, 1.0))
        alpha = np.clip(0.5 - d, 0, 1)[..., None]
        base = _hsv(rng.random(), rng.uniform(0.45, 1.0), rng.uniform(0.35, 1.0))
        # a soft directional gradient gives objects some volume
        a = rng.uniform(0, 2 * np.pi)
        g = (((x - cx) * np.cos(a) + (y - cy) * np.sin(a)) / (2 * r)).clip(-1, 1)[..., None]
        col = np.clip(base * (1.0 + 0.25 * g), 0, 1)
        img = img * (1 - alpha) + col * alpha
        inside = alpha[..., 0] > 0.5
        inst[inside] = i + 1
        klass[inside] = CLASSES.index(cls) + 1
        names.append(cls)
    edges = (ndimage.grey_dilation(inst, size=3) != ndimage.grey_erosion(inst, size=3))
    return Scene(img.astype(np.float32), inst, klass, edges, tuple(names))


# ----------------------------------------------------------------------------------------------- styles
StyleFn = Callable[[Array, dict[str, float], int], Array]


@dataclass(frozen=True)
class Family:
    """A style family: a level, a function and its parameters."""

    name: str
    level: str
    fn: StyleFn
    params: tuple[tuple[str, float, float], ...]
    """``(name, low, high)`` for each parameter; ``u`` in ``[0, 1]`` maps linearly to ``[low, high]``.
    The first is the primary parameter."""
    held_out: bool = False
    """Whether the whole family belongs to the unseen split."""

    def resolve(self, u: dict[str, float]) -> dict[str, float]:
        """Physical parameter values from ``u`` values."""
        return {name: _lerp(lo, hi, u[name]) for name, lo, hi in self.params}


# color ---------------------------------------------------------------------------------------------
def duotone(img: Array, p: dict, seed: int) -> Array:
    lum = np.clip((luminance(img) - 0.5) * p["contrast"] + 0.5, 0, 1)[..., None]
    dark = _hsv(p["hue"] + p["spread"], 0.8, 0.25)
    light = _hsv(p["hue"], 0.55, 0.97)
    return dark * (1 - lum) + light * lum


def posterize(img: Array, p: dict, seed: int) -> Array:
    levels = max(2, int(round(p["levels"])))
    hsv = _rgb_to_hsv(img)
    hsv[..., 1] = np.clip(hsv[..., 1] * p["saturation"], 0, 1)
    q = np.round(_hsv_to_rgb(hsv) * (levels - 1)) / (levels - 1)
    return q


def hue_rotate(img: Array, p: dict, seed: int) -> Array:
    hsv = _rgb_to_hsv(img)
    hsv[..., 0] = (hsv[..., 0] + p["angle"] / 360.0) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * p["saturation"], 0, 1)
    return _hsv_to_rgb(hsv)


def sepia(img: Array, p: dict, seed: int) -> Array:
    m = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)
    s = np.clip(img @ m.T, 0, 1)
    out = img * (1 - p["strength"]) + s * p["strength"]
    return np.clip(out * p["warmth"] ** np.array([-1.0, 0.0, 1.0], np.float32), 0, 1)


def gradient_map(img: Array, p: dict, seed: int) -> Array:
    lum = np.clip(luminance(img), 0, 1)
    stops = np.stack([_hsv(p["hue"], 0.9, 0.15), _hsv(p["hue"] + p["spread"], 0.9, 0.75),
                      _hsv(p["hue"] + 2 * p["spread"], 0.35, 1.0)])
    t = lum * 2
    lo = np.clip(np.floor(t), 0, 1).astype(int)
    f = (t - lo)[..., None]
    return stops[lo] * (1 - f) + stops[lo + 1] * f


# texture -------------------------------------------------------------------------------------------
def _rotated(x: Array, y: Array, angle_deg: float) -> Array:
    a = np.deg2rad(angle_deg)
    return x * np.cos(a) + y * np.sin(a)


def stripes(img: Array, p: dict, seed: int) -> Array:
    size = img.shape[0]
    x, y = _grid(size, seed)
    t = 0.5 + 0.5 * np.sin(2 * np.pi * _rotated(x, y, p["angle"]) / p["period"])
    return img * (1 - p["amplitude"] * t[..., None])


def halftone(img: Array, p: dict, seed: int) -> Array:
    size = img.shape[0]
    x, y = _grid(size, seed)
    s = p["spacing"]
    u, v = _rotated(x, y, p["angle"]), _rotated(x, y, p["angle"] + 90)
    du, dv = (u % s) - s / 2, (v % s) - s / 2
    dist = np.hypot(du, dv) / (s / 2 * 1.414)
    blurred = ndimage.uniform_filter(img, size=(int(s), int(s), 1), mode="reflect")
    dark = 1 - luminance(blurred)
    ink = np.clip((np.sqrt(dark) - dist) * s, 0, 1)[..., None]
    paper = np.array([0.97, 0.96, 0.92], np.float32)
    col = np.clip(blurred * p["ink"], 0, 1)
    return paper * (1 - ink) + col * ink


def grain(img: Array, p: dict, seed: int) -> Array:
    rng = _rng(seed)
    n = smooth_noise(img.shape[0], p["scale"], rng, octaves=2) - 0.5
    return np.clip(img + p["sigma"] * n[..., None] * 2, 0, 1)


def checker(img: Array, p: dict, seed: int) -> Array:
    size = img.shape[0]
    x, y = _grid(size, seed)
    u, v = _rotated(x, y, p["angle"]), _rotated(x, y, p["angle"] + 90)
    c = ((np.floor(u / p["cell"]) + np.floor(v / p["cell"])) % 2)[..., None]
    return np.clip(img * (1 - p["contrast"] * c) + 0.5 * p["contrast"] * c * 0.3, 0, 1)


def canvas(img: Array, p: dict, seed: int) -> Array:
    size = img.shape[0]
    x, y = _grid(size, seed)
    rng = _rng(seed)
    jitter = smooth_noise(size, 6, rng, octaves=1) * 2
    wx = 0.5 + 0.5 * np.sin(2 * np.pi * x / p["period"] + jitter)
    wy = 0.5 + 0.5 * np.sin(2 * np.pi * y / p["period"] + jitter)
    weave = (wx * wy) ** 0.5
    return np.clip(img * (1 - p["depth"] + p["depth"] * (0.4 + 0.9 * weave[..., None])), 0, 1)


# material ------------------------------------------------------------------------------------------
def _render_material(img: Array, albedo: Array, micro: Array, p: dict, tint: float, spec: float) -> Array:
    lum = luminance(img)
    height = ndimage.gaussian_filter(lum, 1.5) * 3.0 + micro
    shade = 0.35 + 0.65 * _shade(height, np.deg2rad(p.get("light", 45.0)), 2.0)
    base = albedo * (1 - tint) + img * tint
    base = base * (0.3 + 0.9 * lum[..., None])
    out = base * shade[..., None]
    if spec:
        out = out + spec * (shade[..., None] ** 24)
    return np.clip(out, 0, 1)


def wood(img: Array, p: dict, seed: int) -> Array:
    size = img.shape[0]
    rng = _rng(seed)
    x, y = _grid(size)
    cx, cy = rng.uniform(-0.5, 1.5, 2) * size
    turb = smooth_noise(size, size / 4, rng) * p["turbulence"]
    r = np.hypot((x - cx) * 0.25, y - cy) / size
    rings = (0.5 + 0.5 * np.sin(2 * np.pi * (r * p["rings"] + turb))) ** 2
    light, dark = np.array([0.78, 0.56, 0.33], np.float32), np.array([0.42, 0.25, 0.12], np.float32)
    albedo = light * (1 - rings[..., None]) + dark * rings[..., None]
    return _render_material(img, albedo, rings * 0.3, p, tint=0.2, spec=0.05)


def marble(img: Array, p: dict, seed: int) -> Array:
    size = img.shape[0]
    rng = _rng(seed)
    x, y = _grid(size)
    turb = smooth_noise(size, size / 3, rng, octaves=4) * p["turbulence"]
    v = np.abs(np.sin(2 * np.pi * ((x + y * 0.6) / size * p["veins"] + turb)))
    veins = 1 - v ** 0.3
    albedo = np.array([0.93, 0.92, 0.9], np.float32) - veins[..., None] * np.array([0.5, 0.5, 0.45], np.float32)
    return _render_material(img, albedo, veins * 0.2, p, tint=0.25, spec=0.15)


def metal(img: Array, p: dict, seed: int) -> Array:
    size = img.shape[0]
    rng = _rng(seed)
    n = rng.random((size, size)).astype(np.float32)
    brushed = ndimage.gaussian_filter(n, (0.4, p["brush"]))
    brushed = (brushed - brushed.mean()) / (brushed.std() + 1e-6)
    grey = np.clip(0.62 + 0.08 * brushed, 0, 1)[..., None] * np.ones(3, np.float32)
    return _render_material(img, grey, brushed * 0.05, p, tint=0.2, spec=0.3)


def fabric(img: Array, p: dict, seed: int) -> Array:
    size = img.shape[0]
    x, y = _grid(size, seed)
    per = p["thread"]
    warp = 0.5 + 0.5 * np.cos(2 * np.pi * x / per)
    weft = 0.5 + 0.5 * np.cos(2 * np.pi * y / per)
    over = ((np.floor(x / per) + np.floor(y / per)) % 2).astype(np.float32)
    weave = over * warp + (1 - over) * weft
    albedo = img * (0.6 + 0.5 * weave[..., None])
    return _render_material(img, albedo, weave * 0.6, p, tint=0.5, spec=0.0)


def stone(img: Array, p: dict, seed: int) -> Array:
    size = img.shape[0]
    rng = _rng(seed)
    pts = rng.random((int(p["cells"]), 2)) * size
    x, y = _grid(size)
    d, _ = cKDTree(pts).query(np.stack([x.ravel(), y.ravel()], 1), k=2)
    crack = (d[:, 1] - d[:, 0]).reshape(size, size)
    crack = np.clip(crack / 3.0, 0, 1)
    speck = smooth_noise(size, 3, rng, octaves=2)
    albedo = (np.array([0.6, 0.58, 0.55], np.float32) * (0.8 + 0.3 * speck[..., None])) * (0.5 + 0.5 * crack[..., None])
    return _render_material(img, albedo, crack * 0.3, p, tint=0.3, spec=0.0)


# stroke --------------------------------------------------------------------------------------------
def hatching(img: Array, p: dict, seed: int) -> Array:
    size = img.shape[0]
    x, y = _grid(size, seed)
    lum = ndimage.gaussian_filter(luminance(img), 1.0)
    ink = np.zeros_like(lum)
    for k, thr in enumerate((0.75, 0.5, 0.3)):
        u = _rotated(x, y, p["angle"] + 60 * k)
        line = np.clip(1.5 - np.abs((u % p["spacing"]) - p["spacing"] / 2) * 1.2, 0, 1)
        ink = np.maximum(ink, line * (lum < thr))
    paper = np.array([0.98, 0.97, 0.93], np.float32)
    ink_col = _hsv(p["ink_hue"], 0.6, 0.2)
    return paper * (1 - ink[..., None]) + ink_col * ink[..., None]


def pointillism(img: Array, p: dict, seed: int) -> Array:
    size = img.shape[0]
    rng = _rng(seed)
    r = p["radius"]
    step = r * 1.4
    gy, gx = np.mgrid[0:size:step, 0:size:step]
    pts = np.stack([gx.ravel(), gy.ravel()], 1) + rng.uniform(-step / 2, step / 2, (gx.size, 2))
    pts = np.clip(pts, 0, size - 1)
    x, y = _grid(size)
    d, idx = cKDTree(pts).query(np.stack([x.ravel(), y.ravel()], 1))
    sample = img[pts[:, 1].astype(int), pts[:, 0].astype(int)]
    sample = np.clip(sample + rng.normal(0, p["jitter"], sample.shape), 0, 1).astype(np.float32)
    dot = np.clip(r - d, 0, 1).reshape(size, size)[..., None]
    paper = np.array([0.96, 0.95, 0.9], np.float32)
    return paper * (1 - dot) + sample[idx].reshape(size, size, 3) * dot


def mosaic(img: Array, p: dict, seed: int) -> Array:
    size = img.shape[0]
    rng = _rng(seed)
    pts = rng.random((int(p["tiles"]), 2)) * size
    x, y = _grid(size)
    d, idx = cKDTree(pts).query(np.stack([x.ravel(), y.ravel()], 1), k=2)
    label = idx[:, 0]
    counts = np.bincount(label, minlength=len(pts)).astype(np.float32)
    flat = img.reshape(-1, 3)
    means = np.stack([np.bincount(label, flat[:, c], minlength=len(pts)) for c in range(3)], 1)
    means = means / np.maximum(counts, 1)[:, None]
    tiles = means[label].reshape(size, size, 3)
    grout = np.clip((d[:, 1] - d[:, 0]).reshape(size, size) / p["grout"], 0, 1)[..., None]
    return (tiles * grout + 0.15 * (1 - grout)).astype(np.float32)


def ink_outline(img: Array, p: dict, seed: int) -> Array:
    flat = ndimage.median_filter(img, size=(5, 5, 1))
    levels = max(2, int(round(p["levels"])))
    flat = np.round(flat * (levels - 1)) / (levels - 1)
    mag = _sobel_mag(ndimage.gaussian_filter(luminance(img), 0.8))
    line = mag > 0.06
    line = ndimage.binary_dilation(line, iterations=max(0, int(round(p["weight"])) - 1)) if p["weight"] >= 2 else line
    ink = _hsv(p["ink_hue"], 0.5, 0.08)
    return np.where(line[..., None], ink, flat).astype(np.float32)


def pixel_art(img: Array, p: dict, seed: int) -> Array:
    size = img.shape[0]
    b = max(2, int(round(p["block"])))
    small = img[: size - size % b or size, : size - size % b or size]
    h = small.shape[0] // b
    small = small[: h * b, : h * b].reshape(h, b, h, b, 3).mean((1, 3))
    levels = max(2, int(round(p["levels"])))
    small = np.round(small * (levels - 1)) / (levels - 1)
    big = np.repeat(np.repeat(small, b, 0), b, 1)
    out = np.zeros_like(img)
    out[: big.shape[0], : big.shape[1]] = big
    if big.shape[0] < size:  # edge strip: extend the last block
        out[big.shape[0]:, :] = out[big.shape[0] - 1: big.shape[0], :]
        out[:, big.shape[1]:] = out[:, big.shape[1] - 1: big.shape[1]]
    return out


def _rgb_to_hsv(img: Array) -> Array:
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    mx, mn = img.max(-1), img.min(-1)
    d = mx - mn
    s = np.where(mx > 0, d / np.maximum(mx, 1e-8), 0)
    dd = np.maximum(d, 1e-8)
    h = np.where(mx == r, ((g - b) / dd) % 6, np.where(mx == g, (b - r) / dd + 2, (r - g) / dd + 4)) / 6.0
    h = np.where(d > 0, h, 0)
    return np.stack([h, s, mx], -1).astype(np.float32)


def _hsv_to_rgb(hsv: Array) -> Array:
    h, s, v = hsv[..., 0] * 6, hsv[..., 1], hsv[..., 2]
    i = np.floor(h).astype(int) % 6
    f = h - np.floor(h)
    p_, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p_), (q, v, p_), (p_, v, t), (p_, q, v), (t, p_, v), (v, p_, q)]
    out = np.zeros(hsv.shape, np.float32)
    for k, (r, g, b) in enumerate(choices):
        m = i == k
        out[m] = np.stack([r[m], g[m], b[m]], -1)
    return out


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("duotone", "color", duotone, (("hue", 0.0, 1.0), ("spread", 0.3, 0.7), ("contrast", 0.9, 1.6))),
        Family("posterize", "color", posterize, (("levels", 5.0, 2.0), ("saturation", 0.7, 1.6))),
        Family("hue_rotate", "color", hue_rotate, (("angle", 40.0, 320.0), ("saturation", 0.6, 1.5))),
        Family("sepia", "color", sepia, (("strength", 0.5, 1.0), ("warmth", 0.9, 1.25))),
        Family("gradient_map", "color", gradient_map, (("hue", 0.0, 1.0), ("spread", 0.05, 0.25)), held_out=True),
        Family("stripes", "texture", stripes, (("period", 14.0, 4.0), ("angle", 0.0, 180.0), ("amplitude", 0.3, 0.7))),
        Family("halftone", "texture", halftone, (("spacing", 8.0, 4.0), ("angle", 0.0, 90.0), ("ink", 0.8, 1.2))),
        Family("grain", "texture", grain, (("sigma", 0.12, 0.35), ("scale", 2.0, 6.0))),
        Family("checker", "texture", checker, (("cell", 12.0, 4.0), ("angle", 0.0, 90.0), ("contrast", 0.2, 0.5))),
        Family("canvas", "texture", canvas, (("period", 6.0, 3.0), ("depth", 0.3, 0.7)), held_out=True),
        Family("wood", "material", wood, (("rings", 6.0, 20.0), ("turbulence", 0.2, 1.2), ("light", 0.0, 360.0))),
        Family("marble", "material", marble, (("veins", 2.0, 7.0), ("turbulence", 0.5, 2.0), ("light", 0.0, 360.0))),
        Family("metal", "material", metal, (("brush", 3.0, 16.0), ("light", 0.0, 360.0))),
        Family("fabric", "material", fabric, (("thread", 6.0, 3.0), ("light", 0.0, 360.0))),
        Family("stone", "material", stone, (("cells", 20.0, 80.0), ("light", 0.0, 360.0)), held_out=True),
        Family("hatching", "stroke", hatching, (("spacing", 7.0, 3.0), ("angle", 0.0, 180.0), ("ink_hue", 0.0, 1.0))),
        Family("pointillism", "stroke", pointillism, (("radius", 3.5, 1.6), ("jitter", 0.02, 0.12))),
        Family("mosaic", "stroke", mosaic, (("tiles", 60.0, 260.0), ("grout", 2.5, 1.2))),
        Family("ink_outline", "stroke", ink_outline, (("levels", 5.0, 2.0), ("weight", 1.0, 3.0), ("ink_hue", 0.0, 1.0))),
        Family("pixel_art", "stroke", pixel_art, (("block", 4.0, 10.0), ("levels", 6.0, 3.0)), held_out=True),
    ]
}


def apply_style(img: Array, family: str, u: dict[str, float], seed: int) -> Array:
    """Apply ``family`` with parameter values ``u`` (each in ``[0, 1]``) and pattern seed ``seed``.

    Returns:
        ``(H, W, 3)`` float32 in ``[0, 1]``.
    """
    fam = FAMILIES[family]
    out = fam.fn(img.astype(np.float32), fam.resolve(u), seed)
    return np.clip(out, 0, 1).astype(np.float32)
