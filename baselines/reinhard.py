"""``reinhard``: global colour transfer by matching Lab mean and standard deviation per channel.

Reinhard, Ashikhmin, Gooch and Shirley, "Color Transfer between Images", IEEE CG&A 2001. The original works
in lαβ; we use CIE Lab (as OpenCV-based implementations do), which behaves alike.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from skimage import color

from sxbench.imageio import array_to_pil, pil_to_array
from sxbench.interfaces import Method


def reinhard_transfer(content: np.ndarray, style: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """``(H, W, 3)`` float RGB in ``[0, 1]`` each; returns the content with the style's Lab statistics."""
    c, s = color.rgb2lab(content), color.rgb2lab(style)
    mc, sc = c.reshape(-1, 3).mean(0), c.reshape(-1, 3).std(0)
    ms, ss = s.reshape(-1, 3).mean(0), s.reshape(-1, 3).std(0)
    out = (c - mc) * (ss / np.maximum(sc, 1e-6)) + ms
    out = c + strength * (out - c)
    out[..., 0] = np.clip(out[..., 0], 0, 100)
    with warnings.catch_warnings():  # out-of-gamut Lab values are clipped to sRGB, as intended
        warnings.simplefilter("ignore", UserWarning)
        return np.clip(color.lab2rgb(out), 0, 1)


def reinhard_tensor(content: torch.Tensor, style: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """``reinhard_transfer`` on ``(3, H, W)`` tensors (the style may have another size); same dtype and device
    as ``content``. For methods that start from or finish with the style's colour statistics."""
    arr = reinhard_transfer(content.detach().permute(1, 2, 0).double().cpu().numpy(),
                            style.detach().permute(1, 2, 0).double().cpu().numpy(), strength)
    return torch.from_numpy(arr).permute(2, 0, 1).to(content)


class Reinhard(Method):
    name = "reinhard"
    licence = "code: Apache-2.0 (this project); no pretrained weights"
    reference = "Reinhard et al., Color Transfer between Images, IEEE CG&A 2001"

    def __init__(self, *, device: str = "cpu", strength: float = 1.0) -> None:
        super().__init__(device=device, strength=float(strength))

    def stylize_batch(self, contents: Sequence[Image.Image], styles: Sequence[Image.Image], *, seeds: Sequence[int]) -> list[Image.Image]:
        k = self.params["strength"]
        return [array_to_pil(reinhard_transfer(pil_to_array(c), pil_to_array(s), k)) for c, s in zip(contents, styles)]
