"""Reading user images robustly, the resize policy, and conversions between PIL, numpy and torch."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

RESIZE_POLICIES = ("crop", "pad", "stretch")
"""``crop``: scale the shorter side to the resolution, then centre-crop a square (default).
``pad``: scale the longer side to the resolution, then pad with mid-grey to a square.
``stretch``: scale each side independently (distorts aspect ratio)."""


MIN_SIDE = 32
"""Inputs whose shorter side has fewer pixels than this are used, upscaled, with a warning."""


class ImageLoadError(ValueError):
    """An input image that cannot be used; the message (one line) names the file and the fix."""


def load_image(path: str | os.PathLike, *, draft_to: int | None = None) -> Image.Image:
    """Read any image PIL understands and return it upright as 8-bit RGB.

    Handles EXIF orientation, CMYK (converted through PIL's colour conversion), 16-bit and 32-bit
    greyscale (scaled to 8 bits by the bit depth), float images, palette images, and alpha (composited
    over white). Animated and multi-page files give their first frame.

    Args:
        draft_to: a JPEG at least four times this size on each side is decoded at a reduced DCT scale
            (1/2, 1/4 or 1/8) that keeps each side at least ``2 × draft_to``; ``None``: full size.

    Raises:
        ImageLoadError: the file is missing, a directory, empty, truncated, not an image, or larger than
            PIL's decompression-bomb limit.
    """
    return _decode(Path(path), draft_to)[0]


def read_input(path: str | os.PathLike, resolution: int, policy: str = "crop") -> tuple[Image.Image, list[str]]:
    """A protocol's input file as ``resolution × resolution`` 8-bit RGB (``fit`` with ``policy``), and one
    warning line (naming the file and what was done) per suspicious-but-usable finding: extra frames
    ignored, a tiny image upscaled, a warning PIL raised while decoding.

    Raises:
        ImageLoadError: as ``load_image``.
    """
    path = Path(path)
    im, frames, notes = _decode(path, resolution)
    if frames > 1:
        notes.append(f"{path}: {frames} frames (animated or multi-page); used the first, ignored the other "
                     f"{frames - 1}")
    if min(im.size) < MIN_SIDE:
        notes.append(f"{path}: only {im.width}×{im.height} pixels; upscaled from {im.width}×{im.height} to "
                     f"{resolution}×{resolution}, so scores on it mean little; use a larger image")
    return fit(im, resolution, policy), notes


def _decode(path: Path, draft_to: int | None) -> tuple[Image.Image, int, list[str]]:
    """``path`` as upright 8-bit RGB, its number of frames, and the warnings PIL raised (one line each)."""
    _check_regular_file(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                # a camera's MPO (a JPEG) holds previews or depth maps after the picture: not frames to warn about
                frames = getattr(im, "n_frames", 1) if im.format != "MPO" else 1
                if draft_to and im.format in ("JPEG", "MPO"):
                    im.draft(im.mode, (2 * draft_to, 2 * draft_to))  # no-op unless it can halve at least once
                im.load()
                im = ImageOps.exif_transpose(im)
            im = to_rgb(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(
            f"{_named(path)}: too many pixels, a possible decompression bomb (PIL: {_one_line(exc)}); downscale "
            f"it below {Image.MAX_IMAGE_PIXELS:,} pixels, or remove it"
        ) from None
    except PermissionError:
        raise ImageLoadError(f"{_named(path)}: permission denied; make it readable (chmod a+r) or remove it") from None
    except UnidentifiedImageError:
        raise ImageLoadError(
            f"{_named(path)}: not an image (PIL cannot identify its format); re-export it as PNG or JPEG, or "
            "remove it"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(
            f"{_named(path)}: cannot be decoded, it may be truncated or corrupt ({exc.__class__.__name__}: "
            f"{_one_line(exc)}); re-export it as PNG or JPEG, or remove it"
        ) from None
    if im.width == 0 or im.height == 0:
        raise ImageLoadError(f"{path}: image has zero size; re-export it or remove it")
    notes = []
    for w in caught:
        if issubclass(w.category, UserWarning):  # PIL's notes on the file (corrupt EXIF, odd palette, ...)
            notes.append(f"{path}: {_one_line(w.message)} (PIL {w.category.__name__})")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return im, frames, notes


def _check_regular_file(path: Path) -> None:
    """Raise ``ImageLoadError`` unless ``path`` is a non-empty regular file (or a link to one); opening a FIFO
    named ``x.png`` would block."""
    if path.is_symlink() and not path.exists():
        raise ImageLoadError(f"{path}: broken symbolic link to {os.readlink(path)} (which does not exist); fix the "
                             "link or remove it")
    if not path.exists():
        raise ImageLoadError(f"{path}: file not found; check the path or the manifest entry")
    if path.is_dir():
        raise ImageLoadError(f"{_named(path)}: a directory, not an image file; move it out of the image folder "
                             "(or point the manifest entry at an image)")
    if not path.is_file():
        raise ImageLoadError(f"{_named(path)}: not a regular file; replace it with an image file or remove it")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{_named(path)}: empty file (0 bytes); re-export it or remove it")


def _named(path: Path) -> str:
    """``path``, followed by what it links to when it is a symbolic link."""
    return f"{path} (a link to {path.resolve()})" if path.is_symlink() else str(path)


def _one_line(obj: object) -> str:
    """``str(obj)`` with runs of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(obj).split())


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


def resize_to(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``(B, 3, h, w)`` images in ``[0, 1]`` at ``height × width``: bicubic, anti-aliased, clamped to ``[0, 1]``;
    returned as they are when already that size (a generator's output brought back to the protocol's size)."""
    if images.shape[-2:] == (height, width):
        return images
    return torch.nn.functional.interpolate(images.float(), size=(height, width), mode="bicubic", antialias=True,
                                           align_corners=False).clamp(0, 1)
