"""Shared benchmark plumbing: the device, correct CUDA timing, and what every result records.

``--require-gpu`` makes a run without CUDA fail instead of falling back to the CPU-sized cases (for a GPU
CI job). On CUDA the timed callable synchronizes, so pytest-benchmark's wall clock measures the kernels,
not their launch; ``cuda_time_ms`` (CUDA events around one extra call) is recorded beside it.
"""

from __future__ import annotations

import platform
import resource
from collections.abc import Callable
from typing import Any

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--require-gpu", action="store_true", help="fail when no CUDA device is visible")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (full-size shapes)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    if config.getoption("--require-gpu"):
        raise pytest.UsageError("--require-gpu: no CUDA device is visible to torch")
    skip = pytest.mark.skip(reason="no CUDA device: GPU-sized case skipped (the CPU-sized cases ran)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe(device: torch.device) -> dict[str, Any]:
    import diffusers

    info = {"device": str(device), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def peak_memory(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20, "memory_kind": "cuda_allocated"}
    return {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "memory_kind": "cpu_rss"}


def run(benchmark: Any, fn: Callable[[], Any], device: torch.device, *, rounds: int = 5, warmup: int = 2,
        **info: Any) -> None:
    """``benchmark.pedantic`` with warm-up and fixed rounds; synchronized on CUDA; records device, memory, CUDA time."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

        def timed() -> Any:
            out = fn()
            torch.cuda.synchronize(device)
            return out
    else:
        timed = fn
    with torch.inference_mode():
        benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup, iterations=1)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            info["cuda_time_ms"] = start.elapsed_time(end)
    benchmark.extra_info.update(describe(device) | peak_memory(device) | info)
