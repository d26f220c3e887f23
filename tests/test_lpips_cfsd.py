"""Standard LPIPS on torchvision trunks (lpips_content, lpips_content_vgg) and StyleID's CFSD.

LPIPS: a random torchvision AlexNet saved exactly as torchvision saves its checkpoint, under the real file
name, loaded through the weights module; the value must be the lpips package's own LPIPS with that trunk.
CFSD: the formula against a transcription of the authors' evaluation code, invariants on the tiny VGG-19, and
(marker ``weights``) the ordering on the real registry VGG-19.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata
from torchvision.transforms.functional import gaussian_blur

from sxbench import registry, weights
from sxbench.backbones.lpips_net import trunk_state_dict
from sxbench.metrics.cfsd import cfsd


def _photo(name: str, size: int = 64) -> torch.Tensor:
    a = getattr(skdata, name)()
    a = np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a[..., :3]
    im = torch.from_numpy(a.copy()).permute(2, 0, 1).float()[None] / 255
    return F.interpolate(im, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


@pytest.fixture(scope="module")
def alex_folder(tmp_path_factory):
    """A weights folder holding a random torchvision AlexNet checkpoint (classifier included) as
    ``lpips-alex/alexnet-owt-7be5be79.pth``; returns (folder, the torchvision model)."""
    from torchvision.models import alexnet

    torch.manual_seed(0)
    model = alexnet(weights=None).eval()
    root = tmp_path_factory.mktemp("lpips-weights")
    (root / "lpips-alex").mkdir()
    # torchvision's older checkpoints are in the legacy (non-zip) format: the harder case for the loader
    torch.save(model.state_dict(), root / "lpips-alex" / "alexnet-owt-7be5be79.pth", _use_new_zipfile_serialization=False)
    from sxbench import weights

    weights.declare_custom("lpips-alex", root, why="random torchvision AlexNet, for tests")  # not the pinned file
    return root, model


def test_lpips_is_the_lpips_package_with_that_trunk(alex_folder, monkeypatch):
    import lpips
    import torchvision.models

    root, tv_model = alex_folder
    m = registry.create_metric("lpips_content", weights_dir=root)
    assert m.info.backbone == "lpips-alex@" + weights.sha256(root / "lpips-alex" / "alexnet-owt-7be5be79.pth")[:12]
    # The reference: lpips.LPIPS(net="alex") where torchvision "downloads" exactly this trunk.
    monkeypatch.setattr(torchvision.models, "alexnet", lambda **_: tv_model)
    ref = lpips.LPIPS(net="alex", verbose=False)
    x = torch.cat([_photo("astronaut"), _photo("coffee")])
    y = torch.cat([gaussian_blur(x[:1], 9, 2.0), _photo("rocket")])
    with torch.no_grad():
        expected = ref(x, y, normalize=True).view(-1)
    got = m.score(x, content=y)
    assert got.shape == (2,) and torch.allclose(got, expected, rtol=1e-5, atol=1e-7), (got, expected)


def test_lpips_invariants(alex_folder):
    m = registry.create_metric("lpips_content", weights_dir=alex_folder[0])
    c = torch.cat([_photo("astronaut"), _photo("chelsea")])
    assert torch.equal(m.score(c, content=c), torch.zeros(2))
    mild, strong = (m.score(gaussian_blur(c, 13, s), content=c) for s in (0.8, 3.0))
    assert (mild > 0).all() and (strong > mild).all(), (mild, strong)
    other = _photo("rocket").repeat(2, 1, 1, 1)
    assert torch.allclose(m.score(other, content=c), m.score(c, content=other), rtol=1e-5)
    small = m.score(c[:, :, :20, :24], content=other[:, :, :20, :24])  # upsampled to the trunk's minimum
    assert small.shape == (2,) and torch.isfinite(small).all()


def test_lpips_missing_trunk_says_how_to_get_it(tmp_path):
    with pytest.raises(weights.WeightsMissingError) as err:
        registry.create_metric("lpips_content", weights_dir=tmp_path)
    msg = str(err.value)
    assert "sxbench weights fetch lpips-alex" in msg and "alexnet-owt-7be5be79.pth" in msg
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in msg and str(tmp_path / "lpips-alex") in msg
    with pytest.raises(weights.WeightsMissingError, match="sxbench weights fetch lpips-vgg"):
        registry.create_metric("lpips_content_vgg", weights_dir=tmp_path)


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")  # torchvision, on lpips' call
def test_lpips_refuses_a_checkpoint_of_another_architecture():
    import lpips

    model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    with pytest.raises(ValueError, match="resnet.pth: not a torchvision alex checkpoint; missing features.0.bias"):
        trunk_state_dict(model, {"conv1.weight": torch.zeros(1)}, "resnet.pth")


# ------------------------------------------------------------------------------------------------ CFSD
def _reference_cfsd(out: torch.Tensor, cnt: torch.Tensor) -> torch.Tensor:
    """StyleID's PatchSimi for one image pair (evaluation/image_metrics.py), in float64."""
    def simi(f, log):
        b, c, h, w = f.shape
        f = f.transpose(1, 3).reshape(b, h * w, c).div(c)
        s = torch.bmm(f, f.transpose(1, 2))
        return (F.log_softmax(s, -1) if log else F.softmax(s, -1)).reshape(b, -1)

    return F.kl_div(simi(out.double(), True), simi(cnt.double(), False), reduction="batchmean")


def test_cfsd_formula_matches_the_authors_code():
    g = torch.Generator().manual_seed(0)
    cnt = torch.rand(2, 16, 6, 5, generator=g) * 4
    out = cnt + 0.5 * torch.rand(2, 16, 6, 5, generator=g)
    got = cfsd(out, cnt)
    expected = torch.stack([_reference_cfsd(out[i:i + 1], cnt[i:i + 1]) for i in range(2)]).float()
    assert torch.allclose(got, expected, rtol=1e-5), (got, expected)
    assert torch.equal(cfsd(cnt, cnt), torch.zeros(2))


def test_cfsd_invariants_on_the_tiny_vgg(tiny_weights):
    m = registry.create_metric("cfsd", weights_dir=tiny_weights)
    c, keys = _photo("astronaut", 128), {"content": ["astronaut"]}  # content features computed once, cached
    assert torch.equal(m.score(c, content=c, keys=keys), torch.zeros(1))
    blurred = m.score(gaussian_blur(c, 9, 1.0), content=c, keys=keys)
    shifted = m.score(torch.roll(c, 3, -1), content=c, keys=keys)
    noise = m.score(torch.rand(c.shape, generator=torch.Generator().manual_seed(0)), content=c, keys=keys)
    assert blurred > 0 and shifted > 0 and noise > blurred and noise > shifted, (blurred, shifted, noise)


@pytest.mark.weights
def test_cfsd_on_the_registry_vgg19(real_weights):
    m = registry.create_metric("cfsd", weights_dir=real_weights)
    c, keys = torch.cat([_photo("astronaut", 128), _photo("coffee", 128)]), {"content": ["astronaut", "coffee"]}
    blurred = m.score(gaussian_blur(c, 9, 1.0), content=c, keys=keys)
    other = m.score(c.flip(0), content=c, keys=keys)  # each photo against the other
    assert (blurred < other / 3).all(), (blurred, other)


