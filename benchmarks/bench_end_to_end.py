"""End to end: the committed tiny ``styleexpert`` through the Method interface on the CPU (images/s), and one
full-size Kontext sampling run (28 steps, 1024², random bfloat16 weights) where a GPU is present."""

from __future__ import annotations

import pytest
import torch
from conftest import run

from sxbench import registry


def test_tiny_styleexpert_images_per_second(benchmark, device):
    proto = registry.create_protocol("synth-smoke")
    pairs = proto.spec.pairs[:8]
    contents = [proto.content(p.content_id) for p in pairs]
    styles = [proto.style(p.style_id) for p in pairs]
    method = registry.create_method("styleexpert", device=str(device))
    run(benchmark, lambda: method.stylize_batch(contents, styles, seeds=list(range(len(pairs)))), device, rounds=3,
        warmup=1, group="end to end", images=len(pairs), resolution=proto.spec.resolution, method="styleexpert",
        steps=method.model.config["sampling"]["steps"] if hasattr(method, "model") else None)
    benchmark.extra_info["images_per_second"] = len(pairs) / benchmark.stats.stats.median


@pytest.mark.gpu
def test_full_size_seconds_per_image(benchmark, device):
    from bench_transformer import _materialize

    from styleexpert.pipeline import StyleExpertPipeline, build

    model = build("full", "moe", device="meta")
    _materialize(model, device, torch.bfloat16)
    pipe = StyleExpertPipeline(model)
    x = torch.rand(1, 3, 1024, 1024, device=device)
    run(benchmark, lambda: pipe(x, x, seeds=[0], num_inference_steps=28), device, rounds=2, warmup=1,
        group="end to end", images=1, resolution=1024, steps=28, method="styleexpert (full, random weights)")
