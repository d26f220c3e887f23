import numpy as np
import pytest
import torch
from PIL import Image

from sxbench.imageio import ImageLoadError, fit, load_image, to_pil, to_tensor


def test_to_pil_accepts_all_output_forms_and_rejects_nonfinite():
    arr = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    a = to_pil(arr)
    b = to_pil(torch.from_numpy(arr).permute(2, 0, 1))
    c = to_pil((arr * 255).round().astype(np.uint8))
    assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(np.asarray(a), np.asarray(c))
    arr[2, 3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        to_pil(arr)
    with pytest.raises(ValueError, match="shape"):
        to_pil(torch.zeros(1, 8, 8))


def test_load_image_conversions(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(p)
    assert np.asarray(load_image(p)).min() == 255  # transparent over white
    q = tmp_path / "b.png"
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(q)
    assert np.asarray(load_image(q)).min() == 255
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match="bad.jpg"):
        load_image(tmp_path / "bad.jpg")


@pytest.mark.parametrize("policy", ["crop", "pad", "stretch"])
def test_fit_policies_give_square(policy):
    im = Image.new("RGB", (70, 30), (10, 200, 30))
    out = fit(im, 32, policy)
    assert out.size == (32, 32)
    t = to_tensor([out])
    assert t.shape == (1, 3, 32, 32) and t.dtype == torch.float32
    with pytest.raises(ValueError, match="resize policy"):
        fit(im, 32, "zoom")
