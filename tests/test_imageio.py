import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from sxbench import imageio
from sxbench.imageio import ImageLoadError, fit, load_image, read_input, to_pil, to_tensor


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


def test_unusable_files_raise_one_line_naming_the_file_and_the_fix(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    cases = {"empty.png": "empty file", "dir.png": "a directory", "dangling.png": "broken symbolic link",
             "cut.png": "truncated", "text.png": "not an image", "link.png": "a link to"}
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:-40])
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "link.png").symlink_to(tmp_path / "text.png")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    for name, words in cases.items():
        with pytest.raises(ImageLoadError) as info:
            load_image(tmp_path / name)
        msg = str(info.value)
        assert msg.startswith(str(tmp_path / name)) and words in msg and "\n" not in msg, msg
        assert "remove it" in msg or "move it out" in msg, msg


def test_read_input_fits_and_notes_what_it_did(tmp_path):
    Image.new("RGB", (3, 40), (9, 9, 9)).save(tmp_path / "thin.png")
    im, notes = read_input(tmp_path / "thin.png", 48)
    assert im.size == (48, 48) and len(notes) == 1 and "upscaled from 3×40 to 48×48" in notes[0]
    frames = [Image.new("L", (40, 40), v) for v in (0, 128, 255, 60)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    im, notes = read_input(tmp_path / "anim.gif", 32)
    assert np.asarray(im).max() == 0 and notes == [f"{tmp_path / 'anim.gif'}: 4 frames (animated or multi-page); "
                                                  "used the first, ignored the other 3"]
    Image.new("RGB", (40, 40)).save(tmp_path / "ok.png")
    assert read_input(tmp_path / "ok.png", 32)[1] == []
    camera = Image.new("RGB", (400, 300), (200, 10, 10))  # a camera JPEG with a preview: MPO, two frames
    camera.save(tmp_path / "camera.jpg", "MPO", save_all=True, append_images=[camera.resize((40, 30))])
    assert Image.open(tmp_path / "camera.jpg").n_frames == 2
    assert read_input(tmp_path / "camera.jpg", 32)[1] == []


def test_pil_warnings_while_decoding_become_note_lines(tmp_path, monkeypatch):
    def noisy(im):
        warnings.warn("Corrupt EXIF data.\nExpecting to read 12 bytes", UserWarning)
        return im.convert("RGB")

    monkeypatch.setattr(imageio, "to_rgb", noisy)
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing escapes as a Python warning
        _, notes = read_input(tmp_path / "a.png", 32)
    assert notes == [f"{tmp_path / 'a.png'}: Corrupt EXIF data. Expecting to read 12 bytes (PIL UserWarning)"]


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif, quality=95)
    im = np.asarray(load_image(tmp_path / "r.jpg"), dtype=np.float32)
    assert im.shape == (40, 20, 3) and im[:15].mean() > 200 and im[-15:].mean() < 50


def test_large_jpegs_decode_at_a_reduced_scale_close_to_the_full_decode(tmp_path):
    y, x = np.mgrid[0:1200, 0:1600]
    arr = np.stack([x / 1600, y / 1200, 0.5 + 0.5 * np.sin(x / 50.0)], -1)
    Image.fromarray((arr * 255).astype(np.uint8)).save(tmp_path / "big.jpg", quality=90)
    full = load_image(tmp_path / "big.jpg")
    draft = load_image(tmp_path / "big.jpg", draft_to=64)
    assert full.size == (1600, 1200) and draft.size == (200, 150)  # 1/8: each side still ≥ 2 × 64
    a, b = (np.asarray(fit(im, 64), np.float32) for im in (full, draft))
    assert np.abs(a - b).mean() < 2 and np.abs(a - b).max() < 12
    assert load_image(tmp_path / "big.jpg", draft_to=800).size == (1600, 1200)  # no room to halve


def test_decompression_bombs_are_load_errors(tmp_path, monkeypatch):
    Image.new("RGB", (100, 100)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # 10 000 pixels: over the limit, under twice it
    with pytest.raises(ImageLoadError, match="decompression bomb.*below 4,000 pixels"):
        load_image(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # over twice the limit: PIL raises
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(tmp_path / "a.png")


@pytest.mark.parametrize("policy", ["crop", "pad", "stretch"])
def test_fit_policies_give_square(policy):
    im = Image.new("RGB", (70, 30), (10, 200, 30))
    out = fit(im, 32, policy)
    assert out.size == (32, 32)
    t = to_tensor([out])
    assert t.shape == (1, 3, 32, 32) and t.dtype == torch.float32
    with pytest.raises(ValueError, match="resize policy"):
        fit(im, 32, "zoom")
