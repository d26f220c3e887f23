"""The CUDA paths (marker ``gpu``, off by default; ``nox -s gpu`` or ``pytest -m gpu`` on a machine with CUDA).

Each compares the GPU result with the same computation on the CPU, so a device or dtype slip shows as a
difference, not as a crash only. Without a CUDA device they skip with that reason.
"""

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")]


def test_moe_layer_on_cuda_bf16_equals_the_cpu_float64_layer():
    from styleexpert.moe import MoELoRALinear

    torch.manual_seed(0)
    cpu = MoELoRALinear(nn.Linear(64, 48, dtype=torch.float64), 16, 8, 4, 2, 16.0, False)
    with torch.no_grad():
        cpu.lora_layer.loraB.normal_(std=0.1)
        cpu.lora_layer.shared_B.normal_(std=0.1)
    x, cond = torch.randn(3, 37, 64, dtype=torch.float64), torch.randn(3, 16, dtype=torch.float64)
    gpu = copy.deepcopy(cpu).to("cuda", torch.bfloat16)  # before a forward: routing state is not copyable
    cpu.set_condition(cond)
    want = cpu(x)
    gpu.set_condition(cond.to("cuda", torch.bfloat16))
    got = gpu(x.to("cuda", torch.bfloat16)).double().cpu()
    assert torch.equal(gpu.routing.indices.cpu(), cpu.routing.indices), "the same experts on both devices"
    # bf16 keeps 8 mantissa bits: relative error ~4e-3 per operation
    torch.testing.assert_close(got, want, rtol=3e-2, atol=3e-2)


def test_tiny_styleexpert_on_cuda_matches_the_cpu_pipeline():
    from styleexpert import inject
    from styleexpert.pipeline import StyleExpertPipeline, build

    model = build("tiny", seed=3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in inject.adapter_parameters(model.transformer):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    contents = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    styles = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    cpu = StyleExpertPipeline(model)(contents, styles, seeds=[0, 1], num_inference_steps=3)
    model.to("cuda")
    out = StyleExpertPipeline(model)(contents.cuda(), styles.cuda(), seeds=[0, 1], num_inference_steps=3)
    assert out.images.device.type == "cuda"
    # the noise comes from a CPU generator per seed, so both devices start from the same latents
    torch.testing.assert_close(out.images.cpu(), cpu.images, rtol=0, atol=2e-3)
    for name, r in cpu.routing.items():
        assert torch.equal(out.routing[name].indices.cpu(), r.indices), name


def test_sxbench_run_on_cuda_stores_what_the_cpu_run_stores(tmp_path):
    import sqlite3

    def run(device):
        out = tmp_path / device
        p = subprocess.run([sys.executable, "-m", "sxbench", "run", "--protocol", "synth-smoke", "--methods",
                            "reinhard,styleexpert", "--metrics", "content_ssim,style_color_swd", "--device", device,
                            "--out", str(out), "--no-progress"], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        with sqlite3.connect(out / "results.sqlite") as c:
            rows = c.execute("SELECT s.method, s.pair_id, v.metric, v.value FROM metric_values v "
                             "JOIN samples s ON s.sample_key = v.sample_key ORDER BY 1, 2, 3").fetchall()
        return rows, out

    (cpu, _), (gpu, out) = run("cpu"), run("cuda")
    assert [r[:3] for r in gpu] == [r[:3] for r in cpu] and len(cpu) == 2 * 8 * 2
    np.testing.assert_allclose([r[3] for r in gpu], [r[3] for r in cpu], atol=2e-2)
    assert all(Image.open(p).size == (64, 64) for p in (out / "images").rglob("*.png"))


@pytest.mark.parametrize("name", ["flux-kontext", "styleexpert", "qwen-image-edit", "flux2-klein"])
def test_full_size_method_from_real_folders_on_cuda(name, tmp_path):
    """Each full-size method on its real folders (``sxbench.folders.FULL_SIZE_ENV``; skipped where unset), at
    bf16 on CUDA, 512² and 4 steps to keep it short: a finite, non-flat image of the content's size, the same
    for the same seed, the same with ``offload=model`` (bf16 tolerance), and routing for ``styleexpert``."""
    from sxbench import registry
    from sxbench.folders import FULL_SIZE_ENV, full_size_params

    params = full_size_params(name)
    if params is None:
        pytest.skip(f"{name}: set {', '.join(FULL_SIZE_ENV[name].values())} to its folders")
    rng = np.random.default_rng(0)
    contents = [Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))]
    styles = [Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))]
    method = registry.create_method(name, device="cuda", resolution=512, steps=4, **params)
    assert method.params["dtype"] == "bfloat16"
    a = method.stylize_batch(contents, styles, seeds=[0])[0]
    b = method.stylize_batch(contents, styles, seeds=[0])[0]
    assert a.shape == (3, 256, 256) and torch.isfinite(a).all() and float(a.std()) > 0.01
    torch.testing.assert_close(a, b, rtol=0, atol=2e-2)
    if name == "styleexpert":
        assert method.routing() is not None
    del method
    torch.cuda.empty_cache()
    offloaded = registry.create_method(name, device="cuda", resolution=512, steps=4, offload="model", **params)
    c = offloaded.stylize_batch(contents, styles, seeds=[0])[0]
    torch.testing.assert_close(c, a, rtol=0, atol=5e-2)
