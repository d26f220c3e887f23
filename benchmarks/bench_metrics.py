"""Throughput of the weight-free metrics on a batch of 8 images at 128² (CPU).

Run: ``python -m pytest benchmarks/bench_metrics.py --benchmark-only``.
"""

import pytest
import torch

from sxbench import registry

NAMES = registry.metrics.names()


@pytest.mark.parametrize("name", NAMES)
def test_metric_throughput(benchmark, name):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 128, 128, generator=g), torch.rand(8, 3, 128, 128, generator=g)
    metric = registry.create_metric(name)
    benchmark.extra_info.update({"batch": 8, "size": 128, "device": "cpu", "torch": torch.__version__})
    benchmark.pedantic(lambda: metric.score(x, content=y, style=y, target=y), rounds=5, warmup_rounds=1)
