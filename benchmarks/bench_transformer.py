"""One Kontext transformer step: bare vs +MoE-LoRA vs +single rank-E·r LoRA vs +MoE merged into the weights.

The same code times the tiny preset on the CPU and the full FLUX.1-Kontext-dev shapes on a GPU (``gpu``
cases: built on the meta device, materialized on the GPU in bfloat16 with random values; latency does not
depend on weight values). One base is kept in memory and re-dressed: MoE, merged MoE, bare (adapters
unwrapped), then a single LoRA injected into the bare model. Inputs follow the Kontext token layout
``[noisy | content | style]`` at the given resolution; the style router is conditioned once, outside timing.
"""

from __future__ import annotations

import pytest
import torch
from conftest import run

from styleexpert import inject
from styleexpert.pipeline import build, pack

VARIANTS = ("moe", "merged", "bare", "lora")
_CACHE: dict[tuple[str, int, str], dict] = {}


def _materialize(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, device=device, dtype=torch.float32).mul_(0.02).to(dtype))
    model.to(dtype)


def _inputs(model, resolution: int, batch: int, device, dtype):
    cfg = model.config
    lat = cfg["latent"]
    side = resolution // lat["vae_scale"]
    c = lat["latent_channels"] if lat["vae"] else 3
    g = torch.Generator(device=device).manual_seed(1)
    content, style, noisy = (torch.randn(batch, c, side, side, generator=g, device=device).to(dtype) for _ in range(3))
    context, ids = model.context_tokens(content, style)
    return pack(noisy, lat["pack"]), context, ids, torch.full((batch,), 0.5, device=device)


def _setup(preset: str, resolution: int, device: torch.device) -> dict:
    key = (preset, resolution, str(device))
    if key in _CACHE:
        return _CACHE[key]
    _CACHE.clear()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if preset == "full":
        model = build("full", "moe", device="meta")
        model.vae = None  # not timed; the step sees latents
        model.style_encoder = None
        _materialize(model, device, dtype)
    else:
        model = build(preset, "moe").to(device, dtype)
    torch.manual_seed(0)
    for layer in inject.adapters(model.transformer).values():  # B = 0 would skip nothing, but be realistic
        torch.nn.init.normal_(layer.lora_layer.loraB, std=0.01)
    cond_dim = next(iter(inject.adapters(model.transformer).values())).lora_layer.cond_gate.in_features
    inject.set_style_condition(model.transformer, torch.randn(1, cond_dim, device=device, dtype=dtype))
    state = {"model": model, "dtype": dtype, "inputs": _inputs(model, resolution, 1, device, dtype), "now": "moe"}
    _CACHE[key] = state
    return state


def _dress(state: dict, variant: str) -> None:
    """Move the shared model to ``variant`` (the order of VARIANTS needs no rebuilds)."""
    model, now = state["model"], state["now"]
    if now == variant:
        return
    t = model.transformer
    if variant == "merged" and now == "moe":
        inject.merge(t)
    elif variant == "bare":
        if now == "merged":
            inject.unmerge(t)
        for name, layer in inject.adapters(t).items():
            inject._replace(t, name, layer.base)
    elif variant == "lora" and now == "bare":
        rank = model.config["moe"]["num_experts"] * model.config["moe"]["rank"]
        inject.inject_lora(t, rank=rank)  # adapters take the base layers' device and dtype
        for layer in inject.adapters(t).values():
            torch.nn.init.normal_(layer.lora_B, std=0.01)
    else:
        raise RuntimeError(f"cannot go from {now} to {variant}; run the variants in the order {VARIANTS}")
    state["now"] = variant


def _case(preset, res, variant, marks=()):
    return pytest.param(preset, res, variant, marks=marks, id=f"{preset}-{res}-{variant}")


@pytest.mark.parametrize(("preset", "resolution", "variant"),
                         [_case("tiny", 64, v) for v in VARIANTS] + [_case("tiny", 128, v) for v in VARIANTS]
                         + [_case("full", r, v, pytest.mark.gpu) for r in (512, 1024) for v in VARIANTS])
def test_transformer_step(benchmark, device, preset, resolution, variant):
    state = _setup(preset, resolution, device)
    _dress(state, variant)
    model = state["model"]
    noisy, context, ids, sigma = state["inputs"]
    run(benchmark, lambda: model.velocity(noisy, context, ids, sigma), device, rounds=5 if preset == "tiny" else 10,
        group=f"step {preset} {resolution}", variant=variant, preset=preset, resolution=resolution,
        tokens=noisy.shape[1] + context.shape[1], dtype=str(state["dtype"]))
