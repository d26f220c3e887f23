"""Reading user images robustly, the resize policy, and conversions between PIL, numpy and torch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

RESIZE_POLICIES = ("crop", "pad", "stretch")
"""``crop``: scale the shorter side to the resolution, then centre-crop a square (default).
``pad``: scale the longer side to the resolution, then pad with mid-grey to a square.
``stretch``: scale each side independently (distorts aspect ratio)."""


class ImageLoadError(ValueError):
    """An input image that cannot be used; the message names the file and the fix."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read any image PIL understands and return it as 8-bit RGB.

    Handles EXIF orientation, CMYK (converted through PIL's colour conversion), 16-bit and 32-bit
    greyscale (scaled to 8 bits by the bit depth), palette images, and alpha (composited over white).

    Raises:
        ImageLoadError: the file is missing, truncated, not an image, or empty.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: file not found; check the path or the manifest entry") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(
            f"{path}: cannot be read as an image ({exc.__class__.__name__}: {exc}); "
            "re-export it as PNG or JPEG, or remove it"
        ) from None
    if im.width == 0 or im.height == 0:
        raise ImageLoadError(f"{path}: image has zero size; re-export it or remove it")
    return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (alpha over white, high bit depths scaled, not clipped)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im, dtype=np.uint16).astype(np.float32) / 65535.0
        return Image.fromarray(np.round(arr * 255).astype(np.uint8)).convert("RGB")
    if im.mode == "I":
        arr = np.asarray(im, dtype=np.int64).astype(np.float64)
        scale = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / scale, 0, 1)
        return Image.fromarray(np.round(arr * 255).astype(np.uint8)).convert("RGB")
    if im.mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float32))
        arr = arr / 255.0 if arr.max(initial=0) > 1.0 else arr
        return Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "RGB" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def fit(im: Image.Image, size: int, policy: str = "crop") -> Image.Image:
    """Bring ``im`` to ``size × size`` with the named policy (see ``RESIZE_POLICIES``); Lanczos resampling."""
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {policy!r}; choose one of {', '.join(RESIZE_POLICIES)}")
    if im.size == (size, size):
        return im
    if policy == "stretch":
        return im.resize((size, size), Image.Resampling.LANCZOS)
    if policy == "crop":
        return ImageOps.fit(im, (size, size), Image.Resampling.LANCZOS)
    return ImageOps.pad(im, (size, size), Image.Resampling.LANCZOS, color=(128, 128, 128))


def to_pil(x: Image.Image | np.ndarray | torch.Tensor) -> Image.Image:
    """A method output as an 8-bit RGB image.

    Accepts ``PIL.Image``, ``(H, W, 3)`` arrays (uint8, or float in ``[0, 1]``) and ``(3, H, W)`` float
    tensors in ``[0, 1]``.

    Raises:
        ValueError: non-finite values, or an unsupported shape or type.
    """
    if isinstance(x, Image.Image):
        return to_rgb(x)
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu()
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"tensor output must have shape (3, H, W), got {tuple(x.shape)}")
        x = x.permute(1, 2, 0).numpy()
    if isinstance(x, np.ndarray):
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"array output must have shape (H, W, 3), got {x.shape}")
        if x.dtype == np.uint8:
            return Image.fromarray(x, "RGB")
        if not np.all(np.isfinite(x)):
            raise ValueError("non-finite values (NaN or inf) in the output")
        return Image.fromarray(np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8), "RGB")
    raise ValueError(f"unsupported output type {type(x).__name__}; return a PIL image, array or tensor")


def pil_to_array(im: Image.Image) -> np.ndarray:
    """``(H, W, 3)`` float32 in ``[0, 1]``."""
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def array_to_pil(arr: np.ndarray) -> Image.Image:
    """``(H, W, 3)`` float in ``[0, 1]`` (clipped) to 8-bit RGB."""
    return Image.fromarray(np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8), "RGB")


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """Stack same-size RGB images into ``(B, 3, H, W)`` float32 in ``[0, 1]``."""
    arr = np.stack([pil_to_array(im) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
