"""``histmatch``: per-channel RGB histogram matching of the content to the style (exact CDF matching)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image
from skimage.exposure import match_histograms

from sxbench.interfaces import Method


class HistMatch(Method):
    name = "histmatch"
    licence = "code: Apache-2.0 (this project); no pretrained weights"
    reference = "control: per-channel histogram matching (Gonzalez & Woods, Digital Image Processing)"

    def stylize_batch(self, contents: Sequence[Image.Image], styles: Sequence[Image.Image], *, seeds: Sequence[int]) -> list[Image.Image]:
        out = []
        for c, s in zip(contents, styles):
            m = match_histograms(np.asarray(c), np.asarray(s), channel_axis=-1)
            out.append(Image.fromarray(np.clip(np.round(m), 0, 255).astype(np.uint8), "RGB"))
        return out
