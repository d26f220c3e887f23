"""StyleExpert at tiny size with random weights: encoder, InfoNCE, pipeline, injection, I/O, plugin."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from styleexpert import inject
from styleexpert.encoder import PositivePairSampler, StyleProjector, multi_positive_infonce, projector_param_count
from styleexpert.io import (load_checkpoint, load_released_adapters, read_config, released_projector_state_dict,
                            save_checkpoint)
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


def _oracle_velocity(x0):
    """The exact velocity field towards a known clean ``x0`` under the convention x_σ = (1 − σ) x₀ + σ ε,
    v = ε − x₀: from x_σ alone, ε − x₀ = (x_σ − x₀) / σ."""
    def velocity(noisy, context, ids, sigma, guidance=None):
        return (noisy - x0) / sigma.view(-1, 1, 1).to(noisy.dtype)

    return velocity


SHIFTED = {"sampling": {"dynamic_shift": True, "base_shift": 0.5, "max_shift": 1.15, "base_seq_len": 256,
                        "max_seq_len": 4096}}
"""Flux's resolution shift on the tiny model: μ = 0.5 at its 256 image tokens (σ 0.75 → 0.83)."""


@pytest.mark.parametrize("overrides", [None, SHIFTED], ids=["no-shift", "shift"])
def test_loss_and_sampler_share_the_flow_matching_convention(overrides):
    """With the oracle velocity of the training convention the loss is 0 and the Euler sampler lands on x₀,
    in 1 and in 4 steps: a sign or σ error in either (or a σ the model sees that differs from the one the
    scheduler integrates with) fails."""
    model = build("tiny", seed=7, overrides=overrides)
    targets = images(2, 11)
    x0 = pack(model.encode(targets), model.config["latent"]["pack"])
    model.velocity = _oracle_velocity(x0)
    g = torch.Generator().manual_seed(0)
    loss = flow_matching_loss(model, images(2, 1), images(2, 2), targets, g, sigma=torch.tensor([0.2, 0.9]))
    assert loss.item() < 1e-10
    assert flow_matching_loss(model, images(2, 1), images(2, 2), targets, g).item() < 1e-10  # logit-normal σ
    pipe = StyleExpertPipeline(model)
    for steps in (1, 4):
        out = pipe(images(2, 1), images(2, 2), seeds=[0, 1], num_inference_steps=steps)
        torch.testing.assert_close(out.images, targets, atol=1e-5, rtol=0)
    second = pipe.scheduler.sigmas[1].item()  # of the 4 steps: 0.75 unshifted
    assert second == pytest.approx(0.75 if overrides is None else math.e**0.5 / (math.e**0.5 + 1 / 0.75 - 1))


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


def test_tiny_v2_round_trip_loads_the_registry_backbone_and_the_autoencoder(tmp_path, tiny_weights):
    """tiny-v2 stores its autoencoder beside the base and never its style backbone: that comes from the weights
    folder (here random DINOv2-S weights of the real class, declared as custom), checked and named by sha256."""
    from safetensors.torch import load_file

    from sxbench import weights
    from styleexpert.io import load_registry_backbone

    model = build("tiny-v2", "moe", seed=5)
    digest = load_registry_backbone(model, tiny_weights)
    assert digest == weights.check("dinov2-s", tiny_weights)[1]
    _randomize_adapters(model, 2)
    save_checkpoint(model, tmp_path / "v2")
    assert not any(k.startswith("backbone.") for k in load_file(str(tmp_path / "v2" / "encoder.safetensors")))
    assert (tmp_path / "v2" / "vae.safetensors").is_file()
    loaded = load_checkpoint(tmp_path / "v2", weights_root=tiny_weights)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.style_encoder.backbone_sha256 == digest
    # 128² images → 32² latents of 8 channels → 64 tokens of 128 channels per image; the encoder sees 8² + 1 tokens
    lat = loaded.encode(images(2, 1, 128))
    assert lat.shape == (2, 8, 32, 32) and pack(lat, 4).shape == (2, 64, 128)
    assert [h.shape for h in loaded.style_encoder.hidden_states(images(2, 2, 128))] == [(2, 65, 384)] * 3
    x = StyleExpertPipeline(model)(images(1, 1, 128), images(1, 2, 128), seeds=[3], num_inference_steps=2).images
    y = StyleExpertPipeline(loaded)(images(1, 1, 128), images(1, 2, 128), seeds=[3], num_inference_steps=2).images
    assert x.shape == (1, 3, 128, 128) and torch.equal(x, y)
    with pytest.raises(weights.WeightsMissingError, match="sxbench weights fetch dinov2-s"):
        load_checkpoint(tmp_path / "v2", weights_root=tmp_path / "empty")


def test_load_balancing_term_is_one_when_uniform_and_e_over_k_when_collapsed():
    from styleexpert.train import load_balancing_loss

    model = build("tiny", "moe", seed=0)
    e = model.style_encoder.embedding_dim
    # a zero router: every probability 1/E, so E · Σ f_i P_i = E · Σ f_i / E = 1 whatever the top-k picks
    for m in model.transformer.modules():
        if hasattr(m, "cond_gate"):
            torch.nn.init.zeros_(m.cond_gate.weight)
    assert load_balancing_loss(model, torch.randn(8, e)).item() == pytest.approx(1.0, abs=1e-6)
    # every sample on the same two experts with (nearly) all the probability: E · (2 · 1/2 · 1/2) = E / 2
    for m in model.transformer.modules():
        if hasattr(m, "cond_gate"):
            with torch.no_grad():
                m.cond_gate.weight.zero_()
                m.cond_gate.weight[:2, 0] = 100.0
    cond = torch.zeros(8, e)
    cond[:, 0] = 1.0
    assert load_balancing_loss(model, cond).item() == pytest.approx(16 / 2, rel=1e-4)


def test_float16_storage_loads_the_rounded_weights_in_float32(tmp_path):
    """The committed checkpoints are stored in float16 (half the bytes); loading gives float32 tensors equal to
    the saved model's weights rounded to float16, and the stored files really hold float16."""
    from safetensors import safe_open

    model = build("tiny", "moe", seed=7)
    _randomize_adapters(model, 3)
    save_checkpoint(model, tmp_path / "h", storage_dtype=torch.float16)
    with safe_open(str(tmp_path / "h" / "adapters.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    loaded = load_checkpoint(tmp_path / "h")
    assert read_config(tmp_path / "h")["storage_dtype"] == "float16"
    for k, v in model.state_dict().items():
        got = loaded.state_dict()[k]
        assert got.dtype == torch.float32 and torch.equal(got, v.half().float()), k


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


def _released_projector_forward(state, hidden_states, layer_indices):
    """Independent re-implementation of the release's ``SigLIPMultiFeatProjModel.forward`` (one projection layer):
    its modules are a ``ModuleDict`` keyed by the SigLIP layer index, applied to ``hidden_states[idx]`` in
    ``layer_indices`` order and concatenated along the token axis."""
    out = []
    for idx in layer_indices:
        def w(name):
            return state[f"proj_model.{name.format(idx)}"]

        h = hidden_states[idx].transpose(1, 2)
        t = F.silu(h @ w("embedding_linears.{}.0.weight").T + w("embedding_linears.{}.0.bias")).transpose(1, 2)
        t = F.layer_norm(t, t.shape[-1:], w("layer_norms.{}.weight"), w("layer_norms.{}.bias"))
        out.append(t @ w("projections.{}.weight").T + w("projections.{}.bias"))
    return torch.cat(out, dim=1)


def test_released_projector_keys_map_onto_ours():
    """All 18 released tensors land where the release uses them: the keys name SigLIP layers (-2, -11, -20),
    ours are positions in ``layer_indices``; a reversed or shifted mapping fails (the middle layer alone would
    not notice a reversal)."""
    idx = [-2, -11, -20]
    tokens, dim, style_tokens, hidden = 16, 12, 4, 5
    shapes = {"embedding_linears.{}.0.weight": (style_tokens, tokens), "embedding_linears.{}.0.bias": (style_tokens,),
              "layer_norms.{}.weight": (dim,), "layer_norms.{}.bias": (dim,),
              "projections.{}.weight": (hidden, dim), "projections.{}.bias": (hidden,)}
    g = torch.Generator().manual_seed(0)
    released = {}
    for n, (i, (pattern, shape)) in enumerate((i, item) for i in idx for item in shapes.items()):
        # distinct values in every tensor: tensor n holds numbers in [n, n + 0.5)
        released[f"proj_model.{pattern.format(i)}"] = n + 0.5 * torch.rand(shape, generator=g)
    assert len(released) == 18
    ours = StyleProjector(3, tokens, dim, style_tokens, hidden)
    ours.load_state_dict(released_projector_state_dict(released, idx))  # strict: all 18 keys, no more
    by_position = {"embedding_linears.{}.0.weight": "token_mix.{}.weight",
                   "embedding_linears.{}.0.bias": "token_mix.{}.bias",
                   "layer_norms.{}.weight": "norm.{}.weight", "layer_norms.{}.bias": "norm.{}.bias",
                   "projections.{}.weight": "proj.{}.weight", "projections.{}.bias": "proj.{}.bias"}
    mine = ours.state_dict()
    for pos, i in enumerate(idx):
        for theirs, our in by_position.items():
            assert torch.equal(mine[our.format(pos)], released[f"proj_model.{theirs.format(i)}"]), (our.format(pos), i)
    # and the whole head computes what the release computes on SigLIP's hidden states
    hs = {i: torch.randn(2, tokens, dim, generator=g) for i in range(-27, 0)}
    with torch.no_grad():
        got = ours([hs[i] for i in idx])
    torch.testing.assert_close(got, _released_projector_forward(released, hs, idx), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A tiny StyleExpert checkpoint with random adapters, run by sxbench on 3 synth-smoke pairs in batches of 2."""
    from sxbench.runner import RunConfig, Runner

    root = tmp_path_factory.mktemp("plugin")
    model = build("tiny", seed=6)
    _randomize_adapters(model)
    save_checkpoint(model, root / "ckpt")
    args = {"checkpoint": str(root / "ckpt"), "steps": 2}
    summary = Runner(RunConfig("synth-smoke", methods=("styleexpert",), out=root / "run", limit=3, batch_size=2,
                               metrics=("content_ssim", "target_psnr"), progress=False,
                               method_args={"styleexpert": args})).run()
    return root / "ckpt", root / "run", summary


def test_plugin_method_runs_in_sxbench_and_reports_routing(smoke_run):
    from sxbench import registry
    from sxbench.protocols.synth import synth_smoke
    from sxbench.store import Store

    ckpt, run, summary = smoke_run
    method = registry.create_method("styleexpert", checkpoint=str(ckpt), steps=2)
    p = synth_smoke()
    pairs = p.spec.pairs[:2]
    outs = method.stylize_batch([p.content(x.content_id) for x in pairs], [p.style(x.style_id) for x in pairs], seeds=[0, 1])
    assert len(outs) == 2 and outs[0].shape == (3, 64, 64)
    r = method.routing()
    assert r.num_experts == 16 and len(r.indices) == 40 and next(iter(r.indices.values())).shape == (2, 2)
    assert summary.generated == 3 and summary.failed == 0
    with Store(run) as st:
        assert len(st.values()) > 0


def test_stored_routing_equals_the_methods_routing(smoke_run):
    """The ``routing`` table of the run store holds, per sample, layer and slot, exactly the experts and weights
    the method reports for those inputs, and those are the top-2 of each layer's router on the style
    embedding, computed here by hand."""
    from sxbench import registry
    from sxbench.imageio import to_tensor
    from sxbench.protocols.synth import synth_smoke
    from sxbench.store import Store

    ckpt, run, _ = smoke_run
    with Store(run) as st:
        stored = st.routing()
    p = synth_smoke()
    by_id = {x.pair_id: x for x in p.spec.pairs}
    order = {x.pair_id: i for i, x in enumerate(p.spec.pairs)}  # the runner's order (``--limit`` keeps it)
    samples = sorted(set(zip(stored.pair_id, stored.seed)), key=lambda s: (order[s[0]], s[1]))
    assert len(samples) == 3
    method = registry.create_method("styleexpert", checkpoint=str(ckpt), steps=2)
    model = method.model
    expected = set()
    for batch in (samples[:2], samples[2:]):  # as the run batched them: float32 sums differ in the last bit by batch
        styles = [p.style(by_id[pid].style_id) for pid, _ in batch]
        method.stylize_batch([p.content(by_id[pid].content_id) for pid, _ in batch], styles,
                             seeds=[int(seed) for _, seed in batch])
        r = method.routing()
        expected |= {(pid, layer, slot, int(r.indices[layer][j, slot]), float(r.weights[layer][j, slot]), 16)
                     for j, (pid, _) in enumerate(batch) for layer in r.indices for slot in range(2)}
        # the method's report is the router's choice: top-2 logits of cond_gate on the style embedding, softmaxed
        with torch.no_grad():
            emb = model.style_embedding(to_tensor(styles))
            for name, layer in inject.adapters(model.transformer).items():
                top = (emb @ layer.lora_layer.cond_gate.weight.T).topk(2, dim=1)
                assert torch.equal(r.indices[name], top.indices), name
                torch.testing.assert_close(r.weights[name], torch.softmax(top.values, 1), rtol=1e-6, atol=1e-7)
    got = set(zip(stored.pair_id, stored.layer, stored.slot, stored.expert, stored.weight, stored.num_experts))
    assert len(got) == 3 * 40 * 2 and got == expected
    assert len({(e, w) for _, _, _, e, w, _ in got}) > 40, "routing varies between layers and samples"


def test_missing_checkpoint_is_one_clear_error(tmp_path):
    from sxbench import registry

    with pytest.raises(FileNotFoundError, match="no checkpoint at .*save_checkpoint"):
        registry.create_method("styleexpert-lora", checkpoint=str(tmp_path / "none"))


# FLUX.1-Kontext-dev from its architecture (PAPER.md §2.1, §2.4), written out independently of the presets:
# hidden D = 24 heads × 128, 19 double-stream and 38 single-stream blocks, MLP ratio 4, 64 packed latent
# channels, T5 width 4096, pooled CLIP width 768, timestep/guidance sinusoid width 256.
D, DOUBLE, SINGLE, MLP = 24 * 128, 19, 38, 4 * 24 * 128
DOUBLE_LINEARS = [(D, D)] * 8 + [(D, MLP), (MLP, D)] * 2 + [(D, 6 * D)] * 2
"""(in, out) of a double block's linears: q, k, v, out of both streams; both feed-forwards; both AdaLN."""
SINGLE_LINEARS = [(D, D)] * 3 + [(D, MLP), (D + MLP, D), (D, 3 * D)]
"""q, k, v; proj_mlp; proj_out (attention and MLP concatenated); AdaLN."""
NON_BLOCK = ((64 * D + D) + (4096 * D + D) + 2 * ((256 * D + D) + (D * D + D)) + (768 * D + D) + (D * D + D)
             + (D * 2 * D + 2 * D) + (D * 64 + 64))
"""x_embedder, context_embedder, timestep and guidance embedders, text (pooled) embedder, norm_out, proj_out."""


def test_full_parameter_and_flop_counts_are_exact():
    """Exact integers from ``styleexpert.stats`` against counts derived by hand from the architecture.

    The paper's table (PAPER.md §6.3) prints 818.71 M for the mixture, which is this exact count rounded
    (818,706,496), and 751.48 M for the rank-128 LoRA, which is not: the exact count of the same layers is
    751,466,560 = 751.47 M (off by 13 k, probably the review's or the paper's rounding). The code is right.
    """
    from diffusers import FluxTransformer2DModel

    from styleexpert.stats import summarize

    linears = DOUBLE * DOUBLE_LINEARS + SINGLE * SINGLE_LINEARS
    width = sum(i + o for i, o in linears)  # Σ (in + out): parameters per unit of LoRA rank
    assert len(linears) == 494 and width == 1748 * D == 5_369_856
    # the hand-written layer list is diffusers' own: count the plain model's block linears on the meta device
    with torch.device("meta"):
        flux = FluxTransformer2DModel(num_layers=DOUBLE, num_single_layers=SINGLE, attention_head_dim=128,
                                      num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                                      in_channels=64, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    block = [m for n, m in flux.named_modules()
             if isinstance(m, torch.nn.Linear) and n.split(".")[0].endswith("blocks")]
    assert sorted((m.in_features, m.out_features) for m in block) == sorted(linears)
    outside = sum(p.numel() for n, p in flux.named_parameters() if not n.split(".")[0].endswith("blocks"))
    assert outside == NON_BLOCK == 64_124_992

    experts, rank, cond_dim, lora_rank = 16, 8, 3072, 128
    router = len(linears) * cond_dim * experts
    moe = (experts + 1) * rank * width + router + NON_BLOCK  # routed experts + shared expert + routers
    lora = lora_rank * width + NON_BLOCK
    assert (moe, lora) == (818_706_496, 751_466_560)

    s = summarize("full")
    assert (s.wrapped_linears, s.moe_trainable, s.lora_trainable, s.router, s.non_block, s.lora_rank) == \
        (494, moe, lora, router, NON_BLOCK, lora_rank)
    # FLOPs per image token (2 per multiply-add) over the linears an image token passes through: the image
    # stream of the double blocks (q, k, v, out, feed-forward) and all of a single block but its AdaLN
    image = DOUBLE * ([(D, D)] * 4 + [(D, MLP), (MLP, D)]) + SINGLE * SINGLE_LINEARS[:-1]
    assert s.base_flops_per_token == 2 * sum(i * o for i, o in image) == 2 * 57 * 12 * D * D
    assert s.lora_flops_per_token == 2 * lora_rank * sum(i + o for i, o in image)
    assert s.moe_flops_per_token == 2 * (2 + 1) * rank * sum(i + o for i, o in image)  # shared + top-2 active


def test_inspect_prints_the_exact_counts(capsys):
    from sxbench.cli import main

    assert main(["inspect", "styleexpert", "--preset", "full"]) == 0
    out = capsys.readouterr().out
    assert "wrapped linears: 494" in out
    assert "MoE-LoRA: 818.71 M = 818,706,496" in out and "rank-128 LoRA: 751.47 M = 751,466,560" in out
