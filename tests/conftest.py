"""Shared fixtures: small image folders generated on the fly, never downloaded."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin(x / 5.0 + seed)], -1)
    return np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)


def write_odd_images(root: Path) -> dict[str, Path]:
    """content/ with a corrupt PNG, a CMYK JPEG, a 16-bit PNG, an RGBA PNG and a non-square image; style/ with two."""
    (root / "content").mkdir(parents=True)
    (root / "style").mkdir()
    files = {}
    good = Image.fromarray((_rgb(48, 48, 0) * 255).astype(np.uint8))
    buf = io.BytesIO()
    good.save(buf, format="PNG")
    files["corrupt"] = root / "content" / "corrupt.png"
    files["corrupt"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    files["cmyk"] = root / "content" / "cmyk.jpg"
    Image.fromarray((_rgb(40, 40, 1) * 255).astype(np.uint8)).convert("CMYK").save(files["cmyk"], "JPEG")
    files["sixteen"] = root / "content" / "sixteen.png"
    Image.fromarray((_rgb(40, 40, 2)[..., 0] * 65535).astype(np.uint16)).save(files["sixteen"])
    files["rgba"] = root / "content" / "rgba.png"
    rgba = np.concatenate([_rgb(40, 40, 3), np.linspace(0, 1, 40 * 40).reshape(40, 40, 1)], -1)
    Image.fromarray((rgba * 255).astype(np.uint8), "RGBA").save(files["rgba"])
    files["wide"] = root / "content" / "wide.png"
    Image.fromarray((_rgb(30, 70, 4) * 255).astype(np.uint8)).save(files["wide"])
    for i in range(2):
        p = root / "style" / f"style{i}.png"
        Image.fromarray((_rgb(50, 50, 10 + i)[..., ::-1] * 255).astype(np.uint8)).save(p)
        files[f"style{i}"] = p
    return files


@pytest.fixture
def odd_folder(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    root = tmp_path / "user"
    return root, write_odd_images(root)
