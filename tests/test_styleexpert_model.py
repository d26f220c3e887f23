"""StyleExpert at tiny size with random weights: encoder, InfoNCE, pipeline, injection, I/O, plugin."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from styleexpert import inject
from styleexpert.encoder import PositivePairSampler, StyleProjector, multi_positive_infonce, projector_param_count
from styleexpert.io import load_checkpoint, load_released_adapters, released_projector_state_dict, save_checkpoint
from styleexpert.moe import LoRALinear, MoELoRALinear
from styleexpert.pipeline import StyleExpertPipeline, build, flow_matching_loss, pack, unpack


@pytest.fixture(scope="module")
def tiny():
    return build("tiny", seed=0)


def images(n, seed, size=64):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_infonce_matches_hand_computation():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]])
    e2 = torch.tensor([[0.5, 0.5], [1.0, -1.0], [0.0, 2.0], [2.0, 0.1]])
    labels, labels2 = torch.tensor([0, 1, 0, 2]), torch.tensor([0, 2, 1, 0])
    tau = 0.5
    total = 0.0
    for i in range(4):
        d = [sum(a * b for a, b in zip(e[i].tolist(), e2[j].tolist())) / (e[i].norm().item() * e2[j].norm().item() * tau)
             for j in range(4)]
        logz = math.log(sum(math.exp(v) for v in d))
        pos = [j for j in range(4) if labels2[j] == labels[i]]
        total += -sum(d[j] - logz for j in pos) / len(pos)
    assert multi_positive_infonce(e, e2, labels, labels2, tau).item() == pytest.approx(total / 4, rel=1e-6)
    with pytest.raises(ValueError, match="positive"):
        multi_positive_infonce(e, e2, labels, torch.tensor([5, 5, 5, 5]))


def test_sampler_guarantees_a_positive_for_every_anchor():
    labels = np.repeat(np.arange(7), [1, 2, 3, 5, 1, 4, 2])
    sampler = PositivePairSampler(labels, batch_size=6, seed=0)
    for _ in range(50):
        a, b = sampler.sample()
        assert set(labels[a]) <= set(labels[b])


def test_encoder_shapes_and_full_size_projector_count(tiny):
    enc = tiny.style_encoder
    e = enc(images(3, 1))
    assert e.shape == (3, 3 * 8 * 16) == (3, enc.embedding_dim)
    assert not any(p.requires_grad for p in enc.backbone.parameters())
    full = StyleProjector()
    assert sum(p.numel() for p in full.parameters()) == projector_param_count(3, 729, 1152, 8, 128) == 467_184
    assert full.embedding_dim == 3072


def test_injection_wraps_every_block_linear(tiny):
    names = inject.adapters(tiny.transformer)
    assert len(names) == 2 * 14 + 2 * 6
    assert all(isinstance(m, MoELoRALinear) for m in names.values())
    trainable = {n for n, p in tiny.transformer.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_layer." in n for n in trainable)


def test_fresh_adapters_leave_the_base_transformer_unchanged():
    model = build("tiny", seed=3)
    c, s = images(2, 1), images(2, 2)
    _, context, ids = model.prepare(c, s)
    noisy = torch.randn(2, 256, 48, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.3, 0.8])
    model.condition(s)
    with torch.no_grad():
        wrapped = model.velocity(noisy, context, ids, sigma)
    for name, layer in inject.adapters(model.transformer).items():
        inject._replace(model.transformer, name, layer.base)
    with torch.no_grad():
        base = model.velocity(noisy, context, ids, sigma)
    torch.testing.assert_close(wrapped, base, atol=1e-6, rtol=0)


def test_pack_unpack_round_trip():
    x = torch.randn(2, 3, 8, 12)
    assert pack(x, 4).shape == (2, 6, 48)
    assert torch.equal(unpack(pack(x, 4), 8, 12, 4), x)


def _randomize_adapters(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in inject.adapter_parameters(model.transformer):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_tiny_pipeline_generates_two_styles_end_to_end():
    model = build("tiny", seed=1)
    _randomize_adapters(model)
    pipe = StyleExpertPipeline(model)
    contents = images(1, 5).expand(4, -1, -1, -1)
    styles = torch.cat([images(1, 6).expand(2, -1, -1, -1), images(1, 7).expand(2, -1, -1, -1)])
    calls = []
    layer = next(iter(inject.adapters(model.transformer).values()))
    original = layer.lora_layer.route
    layer.lora_layer.route = lambda cond: calls.append(cond.shape) or original(cond)
    seen = []
    hook = layer.register_forward_hook(lambda mod, inp, out: seen.append(mod.routing.indices.clone()))
    out = pipe(contents, styles, seeds=[0, 0, 0, 0], num_inference_steps=4)
    hook.remove()
    assert out.images.shape == (4, 3, 64, 64) and torch.isfinite(out.images).all()
    assert 0 <= out.images.min() and out.images.max() <= 1
    assert len(calls) == 1, "routing is computed once per image, not per step"
    assert len(seen) == 4 and all(torch.equal(s, seen[0]) for s in seen), "the same experts at every timestep"
    r = out.routing[next(iter(out.routing))]
    assert torch.equal(r.indices[0], r.indices[1]) and torch.equal(r.indices[2], r.indices[3])
    assert torch.allclose(out.images[0], out.images[1], atol=1e-5)  # same style, content and seed
    assert not torch.allclose(out.images[0], out.images[2], atol=1e-3)  # another style
    # batching does not change a sample
    single = pipe(contents[2:3], styles[2:3], seeds=[0], num_inference_steps=4)
    torch.testing.assert_close(single.images[0], out.images[2], atol=1e-4, rtol=0)


def test_flow_matching_loss_trains_adapters_only():
    model = build("tiny", seed=2)
    loss = flow_matching_loss(model, images(2, 1), images(2, 2), images(2, 3), torch.Generator().manual_seed(0))
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(".lora_layer." in n for n in grads)
    assert any("loraA" in n for n in grads) and any("cond_gate" in n for n in grads)


@pytest.mark.parametrize("variant", ["moe", "lora", "noprior"])
def test_checkpoint_round_trip_is_bit_exact(tmp_path, variant):
    model = build("tiny", variant, seed=4)
    _randomize_adapters(model, 1)
    save_checkpoint(model, tmp_path / variant)
    loaded = load_checkpoint(tmp_path / variant)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.variant == variant
    assert all(isinstance(m, LoRALinear if variant == "lora" else MoELoRALinear)
               for m in inject.adapters(loaded.transformer).values())
    x = StyleExpertPipeline(model)(images(1, 1), images(1, 2), seeds=[3], num_inference_steps=2).images
    y = StyleExpertPipeline(loaded)(images(1, 1), images(1, 2), seeds=[3], num_inference_steps=2).images
    assert torch.equal(x, y)


def test_released_adapter_format_loads_with_compat_weighting(tmp_path):
    model = build("tiny", seed=5)
    layers = inject.adapters(model.transformer)
    keep = list(layers)[:5]
    g = torch.Generator().manual_seed(0)
    state = {}
    for name in keep:
        m = layers[name].lora_layer
        for leaf in ("loraA", "loraB", "shared_A", "shared_B", "cond_gate.weight"):
            state[f"transformer.{name}.lora_layer.{leaf}"] = torch.randn(m.get_parameter(leaf).shape, generator=g)
    save_file(state, str(tmp_path / "moe.safetensors"))
    loaded = load_released_adapters(model, tmp_path / "moe.safetensors")
    assert loaded == sorted(keep)
    now = inject.adapters(model.transformer)
    assert set(now) == set(keep) and all(m.released_compat for m in now.values())
    assert torch.equal(now[keep[0]].lora_layer.loraB, state[f"transformer.{keep[0]}.lora_layer.loraB"])
    assert all(m.scale == 16 // 4 for m in now.values())
    bad = {"transformer.nope.lora_layer.loraA": torch.zeros(1)}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="not wrapped"):
        load_released_adapters(build("tiny"), tmp_path / "bad.safetensors")


def test_released_projector_keys_map_onto_ours():
    ours = StyleProjector(3, 16, 12, 4, 5)
    idx = [-2, -11, -20]
    released = {}
    for pos, i in enumerate(idx):
        released[f"proj_model.embedding_linears.{i}.0.weight"] = ours.token_mix[pos].weight.detach() + 1
        released[f"proj_model.embedding_linears.{i}.0.bias"] = ours.token_mix[pos].bias.detach() + 1
        released[f"proj_model.layer_norms.{i}.weight"] = ours.norm[pos].weight.detach() + 1
        released[f"proj_model.layer_norms.{i}.bias"] = ours.norm[pos].bias.detach() + 1
        released[f"proj_model.projections.{i}.weight"] = ours.proj[pos].weight.detach() + 1
        released[f"proj_model.projections.{i}.bias"] = ours.proj[pos].bias.detach() + 1
    ours.load_state_dict(released_projector_state_dict(released, idx))
    assert torch.equal(ours.proj[1].weight, released["proj_model.projections.-11.weight"])


def test_plugin_method_runs_in_sxbench_and_reports_routing(tmp_path):
    from sxbench import registry
    from sxbench.runner import RunConfig, Runner
    from sxbench.store import Store

    model = build("tiny", seed=6)
    _randomize_adapters(model)
    save_checkpoint(model, tmp_path / "ckpt")
    method = registry.create_method("styleexpert", checkpoint=str(tmp_path / "ckpt"), steps=2)
    from sxbench.protocols.synth import synth_smoke

    p = synth_smoke()
    pairs = p.spec.pairs[:2]
    outs = method.stylize_batch([p.content(x.content_id) for x in pairs], [p.style(x.style_id) for x in pairs], seeds=[0, 1])
    assert len(outs) == 2 and outs[0].shape == (3, 64, 64)
    r = method.routing()
    assert r.num_experts == 16 and len(r.indices) == 40 and next(iter(r.indices.values())).shape == (2, 2)
    s = Runner(RunConfig("synth-smoke", methods=("styleexpert",), out=tmp_path / "run", limit=3, progress=False,
                         method_args={"styleexpert": {"checkpoint": str(tmp_path / "ckpt"), "steps": 2}})).run()
    assert s.generated == 3 and s.failed == 0
    with Store(tmp_path / "run") as st:
        assert len(st.values()) > 0


def test_missing_checkpoint_is_one_clear_error(tmp_path):
    from sxbench import registry

    with pytest.raises(FileNotFoundError, match="no checkpoint at .*save_checkpoint"):
        registry.create_method("styleexpert-lora", checkpoint=str(tmp_path / "none"))


def test_inspect_full_reproduces_the_paper_counts():
    p = subprocess.run([sys.executable, "-m", "sxbench.cli", "inspect", "styleexpert", "--preset", "full"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "wrapped linears: 494" in p.stdout
    moe = float(p.stdout.split("MoE-LoRA: ")[1].split(" M")[0])
    lora = float(p.stdout.split("rank-128 LoRA: ")[1].split(" M")[0])
    assert abs(moe - 818.71) / 818.71 < 1e-3 and abs(lora - 751.48) / 751.48 < 1e-3
