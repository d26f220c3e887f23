"""Weight-free metrics: checked against reference implementations (scikit-image, scipy) and their
defining properties."""

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance
from skimage import color
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from sxbench import registry
from sxbench.metrics import functional as Fn
from sxbench.protocols import synthgen


def _img(seed, size=64):
    return torch.from_numpy(synthgen.make_scene(seed, size).image).permute(2, 0, 1)[None]


def _styled(seed, family, size=64, u=0.5):
    fam = synthgen.FAMILIES[family]
    img = synthgen.apply_style(synthgen.make_scene(seed, size).image, family, {p: u for p, _, _ in fam.params}, 1)
    return torch.from_numpy(img).permute(2, 0, 1)[None]


def test_lab_matches_skimage():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ours = Fn.rgb_to_lab(x).permute(0, 2, 3, 1).numpy()
    ref = np.stack([color.rgb2lab(im) for im in x.permute(0, 2, 3, 1).numpy()])
    np.testing.assert_allclose(ours, ref, atol=2e-2)


def test_ssim_matches_skimage_gaussian_ssim():
    # torchmetrics reflect-pads the border where scikit-image crops it; at 256 px the two agree closely
    x, y = _img(1, 256), _img(2, 256)
    ref = structural_similarity(x[0].permute(1, 2, 0).numpy(), y[0].permute(1, 2, 0).numpy(), channel_axis=2,
                                data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert Fn.ssim(x, y).item() == pytest.approx(ref, abs=0.01)
    assert Fn.ssim(x, x).item() == pytest.approx(1.0, abs=1e-4)


def test_ssim_is_torchmetrics_bit_for_bit():
    from torchmetrics.functional.image import structural_similarity_index_measure

    g = torch.Generator().manual_seed(3)
    for shape in [(1, 3, 64, 64), (4, 3, 37, 53), (2, 1, 16, 16)]:
        x, y = torch.rand(*shape, generator=g), torch.rand(*shape, generator=g)
        for b in (y, x * 0.75, x.double()):
            ref = structural_similarity_index_measure(x, b, data_range=1.0, reduction="none").float()
            assert torch.equal(Fn.ssim(x, b), ref), shape


def test_color_quantiles_sort_is_torch_sort():
    v = torch.randn(2, 5, 301, generator=torch.Generator().manual_seed(2))
    v[0, 1, 7] = float("nan")
    for t in (v, v.double()):
        torch.testing.assert_close(Fn._sorted(t), t.sort(dim=-1).values, rtol=0, atol=0, equal_nan=True)


def test_psnr_matches_skimage():
    x, y = _img(1), _img(2)
    ref = peak_signal_noise_ratio(x.numpy(), y.numpy(), data_range=1.0)
    assert Fn.psnr(x, y).item() == pytest.approx(ref, rel=1e-4)
    assert Fn.psnr(x, x).item() == 100.0


def test_sliced_wasserstein_reduces_to_1d_w1():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 3000, 1, generator=g), 2 + 0.5 * torch.randn(1, 2000, 1, generator=g)
    ref = wasserstein_distance(a.flatten().numpy(), b.flatten().numpy())
    assert Fn.sliced_wasserstein(a, b, n_quantiles=512).item() == pytest.approx(ref, rel=0.03)
    assert Fn.sliced_wasserstein(a, a).item() == pytest.approx(0.0, abs=1e-6)


def test_quantiles_match_torch_quantile():
    v = torch.randn(2, 5, 301, generator=torch.Generator().manual_seed(1))
    q = (torch.arange(16, dtype=torch.float64) + 0.5) / 16
    ref = torch.quantile(v, q.float(), dim=-1).permute(1, 2, 0)
    torch.testing.assert_close(Fn._quantiles(v, 16), ref, atol=1e-5, rtol=1e-5)


def test_color_swd_orders_colour_shifts():
    x = _img(3)
    near, far = (x * 0.9).clamp(0, 1), x.flip(1)  # darken vs swap R and B
    d_near, d_far = Fn.color_swd(x, near).item(), Fn.color_swd(x, far).item()
    assert 0 < d_near < d_far


def test_edge_f1_properties():
    x = _img(4)
    e = Fn.edge_map(x)
    assert e.dtype == torch.bool and e.any()
    assert Fn.edge_f1(e, e).item() == 1.0
    shifted = torch.roll(e, 1, dims=-1)
    assert Fn.edge_f1(shifted, e).item() > 0.9  # within tolerance
    assert Fn.edge_f1(torch.roll(e, 5, dims=-1), e).item() < 0.5
    assert Fn.edge_f1(torch.zeros_like(e), e).item() == 0.0
    assert Fn.edge_f1(torch.zeros_like(e), torch.zeros_like(e)).item() == 1.0


def test_gram_distance_separates_textures():
    same_texture = Fn.gram_distance(_styled(1, "stripes"), _styled(2, "stripes")).item()
    other_texture = Fn.gram_distance(_styled(1, "stripes"), _styled(1, "halftone")).item()
    assert Fn.gram_distance(_img(1), _img(1)).item() == pytest.approx(0.0, abs=1e-6)
    assert same_texture < other_texture


def test_high_frequency_distance_sees_added_texture():
    x = _img(5)
    textured = _styled(5, "halftone", u=0.9)
    blurred = Fn.gaussian_blur(x, 1.5)
    assert Fn.high_frequency_distance(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert Fn.high_frequency_distance(x, textured).item() > 0.2
    assert Fn.high_frequency_distance(x, blurred).item() > 0.2


def test_every_registered_metric_has_the_one_shape():
    """Every registered metric is a ``Metric`` built from an ``EvalContext`` (``factory(context)``), whose info
    names its scope; image metrics score per image, set metrics compute over a view."""
    from sxbench.interfaces import EvalContext, ImageMetric, Metric
    from sxbench.metrics.sets import SetMetric

    for name in registry.metrics.names():
        cls = registry.metrics.get(name)
        assert issubclass(cls, Metric), name
        assert cls.info.scope == ("set" if issubclass(cls, SetMetric) else "image"), name
        assert issubclass(cls, ImageMetric) != issubclass(cls, SetMetric), name
    m = registry.metrics.get("target_psnr")(EvalContext())
    x, y = _img(1), _img(2)
    assert m.score(torch.cat([x, x]), target=torch.cat([y, x])).tolist() == pytest.approx([Fn.psnr(x, y).item(), 100.0])
    with pytest.raises(ValueError, match="needs the target"):
        m.score(x)


@pytest.mark.parametrize("name", [n for n in registry.metrics.names() if not registry.metrics.get(n).info.backbone])
def test_every_metric_scores_a_batch_within_range(name):
    m = registry.create_metric(name)
    x = torch.cat([_img(1), _img(2)])
    y = torch.cat([_img(3), _styled(2, "wood")])
    v = m.score(x, content=y, style=y, target=y)
    assert v.shape == (2,) and v.dtype == torch.float32 and torch.isfinite(v).all()
    lo, hi = m.info.range
    assert ((v >= lo - 1e-5) & (v <= hi + 1e-5)).all()
    best = m.score(y, content=y, style=y, target=y)
    assert ((best >= v) if m.info.higher_is_better else (best <= v)).all(), "a perfect output must score best"
