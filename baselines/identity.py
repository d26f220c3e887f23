"""``identity``: returns the content unchanged. The upper bound on content fidelity, a floor on style."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from PIL import Image

from sxbench.interfaces import Method
from sxbench.records import MethodInfo


class Identity(Method):
    name = "identity"
    licence = "code: Apache-2.0 (this project); no pretrained weights"
    reference = "control: output = content"

    @property
    def info(self) -> MethodInfo:
        """``Method.info`` marked as a control: the report shows it as a reference row, never ranked."""
        return replace(super().info, control=True)

    def stylize_batch(self, contents: Sequence[Image.Image], styles: Sequence[Image.Image], *, seeds: Sequence[int]) -> list[Image.Image]:
        return [c.copy() for c in contents]
