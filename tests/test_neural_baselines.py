"""``adain`` and ``gatys`` on a random-weight VGG-19 in the registry's stored format (offline), and (marker
``weights``) on the registry VGG-19 with the committed AdaIN decoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import color

from baselines import adain
from baselines.gatys import STYLE_LAYERS, gram
from sxbench import registry
from sxbench.imageio import to_tensor
from sxbench.weights import WeightsMissingError


def _images(n: int, size: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y, x = np.mgrid[0:size, 0:size] / size
        base = np.stack([np.sin(6 * x + rng.uniform(0, 6)), np.cos(5 * y + rng.uniform(0, 6)), x * y], -1)
        arr = np.clip(0.5 + 0.4 * base + 0.1 * rng.standard_normal((size, size, 3)), 0, 1)
        out.append(Image.fromarray((arr * 255).astype(np.uint8)))
    return out


def _soft(images: list[Image.Image], k: float = 0.25) -> list[Image.Image]:
    """The images with their contrast scaled by ``k`` around mid-grey: styles whose Lab statistics a colour
    transfer reaches without leaving the sRGB gamut, so no clipping distorts the statistics measured."""
    return [Image.fromarray(np.round(255 * (0.5 + k * (np.asarray(im, np.float64) / 255 - 0.5))).astype(np.uint8))
            for im in images]


def _lab(img: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` RGB in ``[0, 1]`` → ``(H·W, 3)`` CIE Lab by scikit-image (the reference, not the code's)."""
    return color.rgb2lab(img.permute(1, 2, 0).double().numpy()).reshape(-1, 3)


def _channel_corr(a: np.ndarray, b: np.ndarray) -> list[float]:
    return [float(np.corrcoef(a[:, i], b[:, i])[0, 1]) for i in range(a.shape[1])]


def _train(out: Path, steps: int, weights: Path, **kw) -> Path:
    kw.setdefault("warmup_steps", 2)  # runs of 3-4 steps cross from the warm-up into the AdaIN phase
    cfg = adain.TrainConfig(out=out, steps=steps, batch_size=2, resolution=32, n_synth_contents=3, n_synth_styles=3,
                            checkpoint_every=2, progress=False, weights_dir=str(weights), **kw)
    return adain.train(cfg)


@pytest.fixture(scope="module")
def decoder(tiny_weights, tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("adain"), 3, tiny_weights)


def test_adain_training_writes_fp16_decoder_with_its_command(decoder):
    from safetensors import safe_open

    cfg = json.loads((decoder / "config.json").read_text())
    assert cfg["command"] == adain.REPRODUCE and cfg["layer"] == adain.TrainConfig.layer and cfg["config"]["steps"] == 3
    with safe_open(str(decoder / "decoder.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
        scales = f.get_tensor("scale_relu1_1")
    assert torch.isfinite(scales).all() and (scales >= 1.0).all() and not torch.all(scales == 1.0)  # measured, floored
    log = json.loads((decoder.parent / "train_log.json").read_text())
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["content"]) for r in log)
    # two warm-up steps (reconstruction only), then the AdaIN losses with the identity term kept
    assert [(r["reconstruction"] > 0, r["content"] > 0, r["style"] > 0) for r in log] == [
        (True, False, False), (True, False, False), (True, True, True)]


def test_adain_warmup_teaches_the_decoder_to_invert_the_encoder(tiny_weights, tmp_path):
    cfg = adain.TrainConfig(out=tmp_path / "w", steps=30, warmup_steps=30, batch_size=2, resolution=16, n_synth_contents=3,
                            n_synth_styles=3, checkpoint_every=30, progress=False, weights_dir=str(tiny_weights))
    folder = adain.train(cfg)
    # on one fixed batch of training crops (the training loss itself varies more between batches than it falls)
    trained, _ = adain.load_decoder(folder)
    fresh = adain.Decoder(cfg.width, cfg.layer)
    fresh.set_scales({k[len("scale_"):]: v.float() for k, v in trained.state_dict().items() if k.startswith("scale_")})
    contents, _ = adain._synth_images(cfg)
    rng = np.random.default_rng(0)
    batch = torch.stack([adain._crop(contents[i % len(contents)], 32, rng, rescale=False) for i in range(8)])
    vgg = adain._encoder("cpu", str(tiny_weights))
    with torch.no_grad():
        before = adain.reconstruction_loss(vgg, fresh.eval(), batch).item()
        after = adain.reconstruction_loss(vgg, trained.float().eval(), batch).item()
    assert after < 0.7 * before, (before, after)


def test_adain_training_resumes_exactly(tiny_weights, tmp_path):
    from safetensors.torch import load_file

    straight = _train(tmp_path / "a", 4, tiny_weights)
    _train(tmp_path / "b", 4, tiny_weights, stop_at=2)  # stops at step 2 with its state on disk, as a kill would
    cfg = json.loads((tmp_path / "b" / "train_log.json").read_text())
    assert len(cfg) == 2
    resumed = _train(tmp_path / "b", 4, tiny_weights)
    a, b = load_file(str(straight / "decoder.safetensors")), load_file(str(resumed / "decoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adain_method_alpha_and_sizes(decoder, tiny_weights):
    m1 = registry.create_method("adain", checkpoint=str(decoder), weights_dir=str(tiny_weights))
    m0 = registry.create_method("adain", checkpoint=str(decoder), weights_dir=str(tiny_weights), alpha=0.0)
    contents, styles = _images(2, 36, 0), _images(2, 48, 1)  # 36: not divisible by 8; styles of another size
    out1 = m1.stylize_batch(contents, styles, seeds=[0, 0])
    assert [tuple(o.shape) for o in out1] == [(3, 36, 36)] * 2
    assert all(float(o.min()) >= 0 and float(o.max()) <= 1 for o in out1)
    alone = m1.stylize_batch(contents[1:], styles[1:], seeds=[0])[0]
    # per-sample statistics: batching changes nothing (beyond float noise, which the colour transfer scales by
    # the ratio of standard deviations: measured 2e-5)
    assert torch.allclose(alone, out1[1], atol=1e-4)
    assert m1.info.params["weights_sha256"] and m1.info.params["alpha"] == 1.0
    assert m1.info.config_hash != m0.info.config_hash


def test_adain_alpha_feeds_the_decoder_the_feature_interpolation(decoder, tiny_weights):
    """The paper's α: the decoder gets ``(1 − α)·f(c) + α·AdaIN(f(c), f(s))``, AdaIN written out here from its
    definition (channel mean and std over space; eps 1e-5 on the variance, as in the authors' code); at α = 0
    the output is the decoded content features and nothing else."""
    contents, styles = _images(2, 32, 0), _images(2, 48, 1)  # 32: divisible by 8, no resize after decoding
    for alpha in (0.0, 0.3):  # 0.3: α and 1 − α differ; weights of both terms are pinned
        m = registry.create_method("adain", checkpoint=str(decoder), weights_dir=str(tiny_weights), alpha=alpha,
                                   colour="decoder")
        fed: list[torch.Tensor] = []
        hook = m.decoder.register_forward_pre_hook(lambda _mod, inp: fed.append(inp[0].clone()))
        try:
            out = m.stylize_batch(contents, styles, seeds=[0, 0])
        finally:
            hook.remove()
        layer = m.decoder.layer
        with torch.no_grad():
            fc = m.decoder.normalise(m.vgg.layers(to_tensor(contents), (layer,), resize=False))[layer]
            for i, style in enumerate(styles):
                fs = m.decoder.normalise(m.vgg.layers(to_tensor([style]), (layer,), resize=False))[layer]
                (vc, mc), (vs, ms) = (torch.var_mean(f, dim=(2, 3), keepdim=True, unbiased=False)
                                      for f in (fc[i:i + 1], fs))
                t = (fc[i:i + 1] - mc) / (vc + 1e-5).sqrt() * (vs + 1e-5).sqrt() + ms
                torch.testing.assert_close(fed[i], (1 - alpha) * fc[i:i + 1] + alpha * t, atol=1e-4, rtol=1e-4)
                if alpha == 0.0:
                    torch.testing.assert_close(out[i], m.decoder(fc[i:i + 1])[0].clamp(0, 1), atol=1e-6, rtol=0)


def test_adain_colour_takes_the_style_statistics_by_alpha(decoder, tiny_weights):
    """``colour="style"``: per Lab channel (scikit-image's Lab), the decoded image's mean and standard deviation
    move to the style's by α: ``(1 − α)·decoded + α·style`` (Reinhard's transfer with strength α), while each
    output channel stays an affine map of the decoded one (the decoded image's structure is kept)."""
    kw = dict(checkpoint=str(decoder), weights_dir=str(tiny_weights))
    contents, styles = _images(2, 32, 4), _soft(_images(2, 40, 5))
    raw = registry.create_method("adain", colour="decoder", **kw)
    for alpha in (1.0, 0.25, 0.0):  # 0.25, not 0.5: α and 1 − α must not look alike
        matched = registry.create_method("adain", alpha=alpha, **kw)  # colour="style", the default
        plain = registry.create_method("adain", alpha=alpha, colour="decoder", **kw)
        got = matched.stylize_batch(contents, styles, seeds=[0, 0])
        decoded = plain.stylize_batch(contents, styles, seeds=[0, 0])
        for g, d, s in zip(got, decoded, to_tensor(styles)):
            lab_g, lab_d, lab_s = _lab(g), _lab(d), _lab(s)
            # per channel, the transfer with strength α is the affine map x → a·x + b that takes the decoded
            # image's mean and std to (1 − α)·decoded + α·style; checked pixel by pixel where sRGB did not clip it
            # (the decoder's own output may sit at 0 or 1; the tiny decoder's colours depend on its training)
            mean = (1 - alpha) * lab_d.mean(0) + alpha * lab_s.mean(0)
            a = ((1 - alpha) * lab_d.std(0) + alpha * lab_s.std(0)) / lab_d.std(0)
            inside, decoded_inside = (((x > 1e-6) & (x < 1 - 1e-6)).all(0).flatten().numpy() for x in (g, d))
            assert inside.sum() > 0.5 * decoded_inside.sum(), "most pixels unclipped, or the check says little"
            np.testing.assert_allclose(lab_g[inside], a * (lab_d[inside] - lab_d.mean(0)) + mean, atol=2e-3)
            if inside.all():  # then the statistics themselves are exact (measured 1e-7 in Lab units)
                np.testing.assert_allclose(lab_g.mean(0), mean, atol=1e-3)
        if alpha == 0.0:  # no style at all: the decoder's colours are kept
            assert all(torch.allclose(g, d, atol=1e-5) for g, d in zip(got, decoded))
    assert registry.create_method("adain", **kw).info.config_hash != raw.info.config_hash
    with pytest.raises(ValueError, match="colour must be one of style, decoder"):
        registry.create_method("adain", colour="content", **kw)


def test_adain_missing_decoder_and_weights(tmp_path, tiny_weights, decoder):
    with pytest.raises(FileNotFoundError, match="sxbench train adain"):
        registry.create_method("adain", checkpoint=str(tmp_path / "none"), weights_dir=str(tiny_weights))
    with pytest.raises(WeightsMissingError, match="sxbench weights fetch vgg19"):
        registry.create_method("adain", checkpoint=str(decoder), weights_dir=str(tmp_path / "empty"))


def test_gatys_lowers_its_loss_and_batches_independently(tiny_weights):
    m = registry.create_method("gatys", weights_dir=str(tiny_weights), iterations=6, resolution=32, lr=0.05)
    contents, styles = _images(2, 40, 2), _images(2, 40, 3)
    out = m.stylize_batch(contents, styles, seeds=[0, 0])
    assert [tuple(o.shape) for o in out] == [(3, 40, 40)] * 2  # back at the protocol's size
    assert all(float(o.min()) >= 0 and float(o.max()) <= 1 for o in out)
    # the optimised image has a lower objective than where it started (the method with no iterations: the
    # colour-matched content, test_gatys_starts_from_the_colour_matched_content)
    x0 = registry.create_method("gatys", weights_dir=str(tiny_weights), iterations=0, resolution=32).stylize_batch(
        contents[:1], styles[:1], seeds=[0])[0]
    before, after = _gatys_objective(m, contents[:1], styles[:1], [x0, out[0]])
    assert after < before
    alone = m.stylize_batch(contents[1:], styles[1:], seeds=[0])[0]
    # Adam's per-element updates: images don't interact. Not bit-equal: conv sums differ in order between
    # batch sizes, and Adam's normalised step turns a 1e-7 gradient difference into a full step where the
    # gradient is near zero (measured: max 2e-4, mean 1e-6)
    assert torch.allclose(alone, out[1], atol=2e-3) and float((alone - out[1]).abs().mean()) < 1e-5


def _gatys_objective(m, contents, styles, images) -> list[float]:
    """The method's objective for each of ``images`` (``(3, H, W)``, brought to its resolution) against one
    content and style."""
    side = m.params["resolution"]
    c, s = m._resize(to_tensor(contents), side), m._resize(to_tensor(styles), side)
    with torch.no_grad():
        cf = m._features(c, ("relu4_2",))["relu4_2"]
        sg = {n: gram(v) for n, v in m._features(s, STYLE_LAYERS).items()}
        return [float(m._loss(m._resize(x[None], side), cf, sg)) for x in images]


def test_gatys_starts_from_the_colour_matched_content(tiny_weights):
    """``init="reinhard"``: the start (no iterations) has the style's Lab mean and standard deviation per channel
    (scikit-image's Lab), and each of its Lab channels is an affine map of the content's."""
    contents, styles = _images(1, 32, 6), _soft(_images(1, 32, 7))
    start = registry.create_method("gatys", weights_dir=str(tiny_weights), iterations=0, resolution=32)
    got = start.stylize_batch(contents, styles, seeds=[0])[0]
    # nothing clipped (measured 0.37 .. 0.67), so the statistics are exact up to float32 rounding
    assert 0 < float(got.min()) and float(got.max()) < 1, "clipped: not the content moved to the style's statistics"
    lab_g, lab_c, lab_s = _lab(got), _lab(to_tensor(contents)[0]), _lab(to_tensor(styles)[0])
    assert np.abs(lab_c.mean(0) - lab_s.mean(0)).max() > 5  # the content's own colours are far from the style's
    np.testing.assert_allclose(lab_g.mean(0), lab_s.mean(0), atol=1e-3)
    np.testing.assert_allclose(lab_g.std(0), lab_s.std(0), atol=1e-3)
    assert min(_channel_corr(lab_g, lab_c)) > 0.9999
    plain = registry.create_method("gatys", weights_dir=str(tiny_weights), iterations=0, resolution=32, init="content")
    assert torch.allclose(plain.stylize_batch(contents, styles, seeds=[0])[0], to_tensor(contents)[0], atol=1e-6)
    assert plain.info.config_hash != start.info.config_hash
    with pytest.raises(ValueError, match="init must be one of reinhard, content"):
        registry.create_method("gatys", weights_dir=str(tiny_weights), init="noise")


def test_gatys_lbfgs_and_bad_parameters(tiny_weights):
    contents, styles = _images(1, 32, 4), _images(1, 32, 5)
    m = registry.create_method("gatys", weights_dir=str(tiny_weights), optimizer="lbfgs", iterations=3, resolution=32)
    out = m.stylize_batch(contents, styles, seeds=[0])
    assert tuple(out[0].shape) == (3, 32, 32) and torch.isfinite(out[0]).all()
    # three L-BFGS iterations move the image from its start and lower the objective (measured: 0.116 → 0.046,
    # pixels moved by up to 0.07)
    x0 = registry.create_method("gatys", weights_dir=str(tiny_weights), iterations=0, resolution=32).stylize_batch(
        contents, styles, seeds=[0])[0]
    before, after = _gatys_objective(m, contents, styles, [x0, out[0]])
    assert after < 0.8 * before, (before, after)
    assert float((out[0] - x0).abs().max()) > 0.01
    assert m.info.params["preset"] == "fast" and m.info.params["optimizer"] == "lbfgs"
    with pytest.raises(ValueError, match="preset"):
        registry.create_method("gatys", weights_dir=str(tiny_weights), preset="nope")
    with pytest.raises(ValueError, match="optimizer"):
        registry.create_method("gatys", weights_dir=str(tiny_weights), optimizer="sgd")


@pytest.mark.weights
def test_real_vgg_methods_transfer_style(real_weights):
    """On the registry VGG-19: gatys and the committed adain decoder bring the Gram statistics of a photo
    toward a texture's (vgg_gram_style falls well below the content's own)."""
    from sxbench.protocols.photos import photos

    p = photos(resolution=128)
    contents, styles = [p.content("astronaut"), p.content("coffee")], [p.style("brick"), p.style("ihc")]
    metric = registry.create_metric("vgg_gram_style", weights_dir=str(real_weights))
    ref = to_tensor(styles)
    base = metric.score(to_tensor(contents), style=ref)
    for name, kw in (("gatys", {"iterations": 30}), ("adain", {})):
        out = torch.stack(registry.create_method(name, weights_dir=str(real_weights), **kw)
                          .stylize_batch(contents, styles, seeds=[0, 0]))
        got = metric.score(out, style=ref)
        assert (got < 0.5 * base).all(), (name, got, base)


def test_adain_resume_with_other_options_names_the_state_file(tiny_weights, tmp_path):
    _train(tmp_path / "r", 4, tiny_weights, stop_at=1)
    with pytest.raises(ValueError, match=r"state\.safetensors.*another --out"):
        _train(tmp_path / "r", 4, tiny_weights, layer="relu4_1")
    with pytest.raises(ValueError, match=r"'identity_weight': '1\.0'.*'identity_weight': '0\.0'"):
        _train(tmp_path / "r", 4, tiny_weights, identity_weight=0.0)


def test_method_cards_list_every_checksum():
    from sxbench.report import _checksums

    got = _checksums({"weights_sha256": {"magenta-predict": "a" * 64, "magenta-transform": "b" * 64},
                      "encoder_sha256": "c" * 64, "nested": {"sha256": "d" * 64}, "alpha": 1.0})
    assert got == {"weights_sha256.magenta-predict": "a" * 16, "weights_sha256.magenta-transform": "b" * 16,
                   "encoder_sha256": "c" * 16, "nested.sha256": "d" * 16}
