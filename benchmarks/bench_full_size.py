"""The full-size methods end to end through the Method interface: seconds per image and peak memory at their
defaults (1024², bf16 on CUDA; 28 steps for the Kontext methods, 40 for Qwen-Image-Edit, 4 for a distilled
FLUX.2 [klein]). The real folders come from the variables of ``sxbench.folders.FULL_SIZE_ENV``; a method whose
folders are not set is skipped, saying which. Anchor: FLUX.1-Kontext-dev in diffusers at bf16 on an H100 takes
14.4 s per image (6.1 s fully optimised).

Without a GPU the same code runs on tiny random folders of the real classes (``tiny`` cases, CPU, 32²): that
checks the path, not the speed.
"""

from __future__ import annotations

import pytest
import torch
from conftest import run
from PIL import Image

from sxbench import registry
from sxbench.folders import FULL_SIZE_ENV, full_size_params

METHODS = tuple(FULL_SIZE_ENV)


def _pair(size: int) -> tuple[list[Image.Image], list[Image.Image]]:
    proto = registry.create_protocol("synth-smoke")
    pair = proto.spec.pairs[0]
    return ([proto.content(pair.content_id).resize((size, size), Image.Resampling.LANCZOS)],
            [proto.style(pair.style_id).resize((size, size), Image.Resampling.LANCZOS)])


@pytest.mark.gpu
@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("offload", ["none", "model"])
def test_full_size_seconds_per_image(benchmark, device, name, offload):
    params = full_size_params(name)
    if params is None:
        pytest.skip(f"{name}: set {', '.join(FULL_SIZE_ENV[name].values())} to its folders")
    torch.cuda.reset_peak_memory_stats(device)
    method = registry.create_method(name, device=str(device), offload=offload, **params)
    contents, styles = _pair(1024)
    run(benchmark, lambda: method.stylize_batch(contents, styles, seeds=[0]), device, rounds=2, warmup=1,
        group=f"full size ({offload})", images=1, resolution=1024, method=name, offload=offload,
        steps=method.params.get("steps"), dtype=method.params.get("dtype"))


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory) -> dict[str, dict[str, str]]:
    from baselines import flux2_klein, qwen_image_edit
    from styleexpert.kontext import write_tiny_release

    root = tmp_path_factory.mktemp("tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SXBENCH_CACHE", str(root / "cache"))
        parts = {k: str(v) for k, v in write_tiny_release(root / "release").items()}
    return {"flux-kontext": {"path": parts["flux"], "steps": 2}, "styleexpert": {**parts, "steps": 2},
            "qwen-image-edit": {"path": str(qwen_image_edit.write_tiny(root / "qwen")), "steps": 2,
                                "reference_area": 64 * 64},
            "flux2-klein": {"path": str(flux2_klein.write_tiny(root / "klein"))}}


@pytest.mark.parametrize("name", METHODS)
def test_tiny_folders_seconds_per_image(benchmark, device, name, tiny_folders, tmp_path, monkeypatch):
    monkeypatch.setenv("SXBENCH_CACHE", str(tmp_path / "cache"))
    method = registry.create_method(name, device=str(device), resolution=32, **tiny_folders[name])
    contents, styles = _pair(64)
    run(benchmark, lambda: method.stylize_batch(contents, styles, seeds=[0]), device, rounds=3, warmup=1,
        group="tiny folders (path check, not speed)", images=1, resolution=32, method=name,
        steps=method.params.get("steps"))
