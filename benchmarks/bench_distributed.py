"""Scaling out end to end: whole ``sxbench run`` commands, timed from outside, with 1 process and with several
(``torchrun --standalone --nproc_per_node N -m sxbench run``).

- CPU, every machine: the ``sleep`` control (a fixed wait per image, no compute) on 48 samples, 1 process against
  2, so what the timing shows beyond the waits is sxbench's own cost: start-up, the shards, the merge, the report
  (``overhead_s`` = wall − waits ÷ N).
- GPU (marker ``gpu``): the committed tiny ``styleexpert`` on ``synth-lite``, 1 GPU against every visible GPU
  (samples per second).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import torch

SLEEP_S = 0.25
SEEDS = "0,1,2,3,4,5"  # synth-smoke's 8 pairs × 6 seeds = 48 samples


def _command(nproc: int, out: str, args: list[str]) -> list[str]:
    run = ["-m", "sxbench", "run", *args, "--no-progress", "--out", out]
    if nproc == 1:
        return [sys.executable, *run]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *run]


def _timed(benchmark, nproc: int, args: list[str], samples: int, **info) -> None:
    def once() -> None:
        out = tempfile.mkdtemp(prefix="sxbench-bench-")
        try:
            subprocess.run(_command(nproc, out, args), check=True, capture_output=True)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    benchmark.pedantic(once, rounds=3, warmup_rounds=0, iterations=1)
    wall = benchmark.stats.stats.median
    benchmark.extra_info.update(processes=nproc, samples=samples, samples_per_second=samples / wall, **info)


@pytest.mark.parametrize("nproc", [1, 2])
def test_process_overhead_with_a_sleeping_method(benchmark, nproc):
    samples = 8 * len(SEEDS.split(","))
    args = ["--protocol", "synth-smoke", "--methods", "sleep", "--param", f"sleep.seconds={SLEEP_S}", "--seeds",
            SEEDS, "--metrics", "content_ssim", "--batch-size", "1"]
    _timed(benchmark, nproc, args, samples, group="processes (sleep)", sleep_s_per_image=SLEEP_S)
    benchmark.extra_info["overhead_s"] = benchmark.stats.stats.median - samples * SLEEP_S / nproc


@pytest.mark.gpu
@pytest.mark.parametrize("all_gpus", [False, True])
def test_samples_per_second_on_one_and_on_every_gpu(benchmark, all_gpus):
    nproc = torch.cuda.device_count() if all_gpus else 1
    args = ["--protocol", "synth-lite", "--methods", "styleexpert", "--device", "cuda", "--metrics", "content_ssim"]
    _timed(benchmark, nproc, args, 168, group="processes (GPU)", gpus=nproc, method="styleexpert (tiny-v2)")
