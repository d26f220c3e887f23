"""``identity``: returns the content unchanged. The upper bound on content fidelity, a floor on style."""

from __future__ import annotations

from typing import Sequence

from PIL import Image

from sxbench.interfaces import Method


class Identity(Method):
    name = "identity"
    licence = "code: Apache-2.0 (this project); no pretrained weights"
    reference = "control: output = content"

    def stylize_batch(self, contents: Sequence[Image.Image], styles: Sequence[Image.Image], *, seeds: Sequence[int]) -> list[Image.Image]:
        return [c.copy() for c in contents]
