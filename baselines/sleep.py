"""``sleep``: the content unchanged after a fixed wait per image: a stand-in for a slow generator with no compute,
for measuring what sxbench itself costs around a method (``benchmarks/bench_distributed.py``: 2 processes
against 1) and for exercising long runs in tests (a rank killed mid-run). A control: never ranked."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Sequence

from PIL import Image

from sxbench.interfaces import Method
from sxbench.records import MethodInfo


class Sleep(Method):
    name = "sleep"
    licence = "code: Apache-2.0 (this project); no pretrained weights"
    reference = "control: output = content, after `seconds` per image (harness overhead)"

    def __init__(self, *, device: str = "cpu", seconds: float = 0.1) -> None:
        if seconds < 0:
            raise ValueError(f"sleep.seconds={seconds}: must be >= 0")
        super().__init__(device=device, seconds=float(seconds))

    @property
    def info(self) -> MethodInfo:
        return replace(super().info, control=True)

    def stylize_batch(self, contents: Sequence[Image.Image], styles: Sequence[Image.Image], *,
                      seeds: Sequence[int]) -> list[Image.Image]:
        time.sleep(self.params["seconds"] * len(contents))
        return [c.copy() for c in contents]
