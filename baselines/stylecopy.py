"""``stylecopy``: returns the style reference, resized to the content. Upper bound on style similarity."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from PIL import Image

from sxbench.interfaces import Method
from sxbench.records import MethodInfo


class StyleCopy(Method):
    name = "stylecopy"
    licence = "code: Apache-2.0 (this project); no pretrained weights"
    reference = "control: output = style reference"

    @property
    def info(self) -> MethodInfo:
        """``Method.info`` marked as a control: the report shows it as a reference row, never ranked."""
        return replace(super().info, control=True)

    def stylize_batch(self, contents: Sequence[Image.Image], styles: Sequence[Image.Image], *, seeds: Sequence[int]) -> list[Image.Image]:
        return [s.resize(c.size, Image.Resampling.LANCZOS) if s.size != c.size else s.copy() for c, s in zip(contents, styles)]
