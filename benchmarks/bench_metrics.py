"""Throughput of the metrics on a batch of 8 images at 128² (CPU), and of each backbone's feature extractor.

Run: ``python -m pytest benchmarks/bench_metrics.py --benchmark-only`` (backbone rows need
``sxbench weights fetch default``; they are skipped, saying so, where the weights are missing).
"""

import pytest
import torch

from sxbench import registry, weights
from sxbench.weights import load_extractor

FREE = [n for n in registry.metrics.names() if registry.metrics.get(n).info.backbone is None]
WITH_BACKBONE = [n for n in registry.metrics.names() if registry.metrics.get(n).info.backbone is not None
                 and hasattr(registry.metrics.get(n), "score")]


def _images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 3, 128, 128, generator=g), torch.rand(8, 3, 128, 128, generator=g)


@pytest.mark.parametrize("name", FREE + WITH_BACKBONE)
def test_metric_throughput(benchmark, name):
    x, y = _images()
    try:
        metric = registry.create_metric(name)
    except weights.WeightsMissingError as exc:
        pytest.skip(str(exc))
    benchmark.group = "metric throughput (batch 8, 128², output + reference)"
    benchmark.extra_info.update({"batch": 8, "size": 128, "device": "cpu", "torch": torch.__version__,
                                 "backbone": metric.info.backbone})
    with torch.no_grad():  # no cache: output and reference features both computed, as for a first sample
        benchmark.pedantic(lambda: metric.score(x, content=y, style=y, target=y), rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("name", sorted(weights.BACKBONES))
def test_backbone_features(benchmark, name):
    x, _ = _images()
    try:
        ext = load_extractor(name)
    except weights.WeightsMissingError as exc:
        pytest.skip(str(exc))
    benchmark.group = "backbone features (batch 8, 128² input)"
    benchmark.extra_info.update({"batch": 8, "input": 128, "resolution": ext.resolution, "device": "cpu"})
    with torch.no_grad():
        fn = (lambda: ext.distance(x, x)) if hasattr(ext, "distance") else (lambda: ext(x))
        benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
