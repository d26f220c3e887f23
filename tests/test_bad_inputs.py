"""A folder protocol over every kind of odd input file: unusable ones give one error line each and drop their
pairs, suspicious ones a warning, the rest run; each pair's ``inputs`` follows the bytes of its files."""

from __future__ import annotations

import io
import logging
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from sxbench import registry
from sxbench.imageio import fit, load_image, pil_to_array

RED, BLUE = (220, 30, 30), (30, 30, 220)

UNUSABLE = {  # file -> words its error line must hold
    "content/empty.png": "empty file",
    "content/text.jpg": "not an image",
    "content/truncated.png": "truncated",
    "content/link_to_text.png": "a link to",
    "content/folder.png": "a directory",
    "content/dangling.png": "broken symbolic link",
    "content/bomb.png": "too many pixels",
    "style/empty.webp": "empty file",
}
USABLE = ("content/good.png", "content/tiny.png", "content/sixteen.png", "content/cmyk.jpg", "content/palette.png",
          "content/animated.gif", "content/rotated.jpg", "content/float.tif", "content/big.jpg")
STYLES = ("style/style0.png", "style/style1.png")


def _gradient(h: int, w: int, seed: int) -> np.ndarray:
    """``(h, w, 3)`` uint8: a smooth colour gradient with a little noise."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin(x / 7.0 + seed)], -1) * 255
    return np.clip(base + np.random.default_rng(seed).normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def png_header(width: int, height: int) -> bytes:
    """A PNG of ``width × height`` RGB pixels as far as its header says, with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue: tells an upright image from a rotated one."""
    arr = np.empty((height, width, 3), np.uint8)
    arr[:, : width // 2], arr[:, width // 2:] = RED, BLUE
    return Image.fromarray(arr)


def write_bad_folder(root: Path) -> Path:
    """``root/content`` and ``root/style`` holding one file of each case in ``UNUSABLE`` and ``USABLE``, a text
    file without an image suffix, and two good styles."""
    content, style = root / "content", root / "style"
    content.mkdir(parents=True)
    style.mkdir()
    Image.fromarray(_gradient(40, 48, 0)).save(content / "good.png")
    (content / "empty.png").write_bytes(b"")
    (content / "text.jpg").write_text("these are my notes, not a picture\n")
    buf = io.BytesIO()
    Image.fromarray(_gradient(48, 48, 1)).save(buf, format="PNG")
    (content / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "notes.txt").write_text("not an image either\n")
    (content / "link_to_text.png").symlink_to(root / "notes.txt")
    (content / "folder.png").mkdir()
    (content / "dangling.png").symlink_to(root / "nowhere.png")
    (content / "bomb.png").write_bytes(png_header(20000, 20000))  # 400 M pixels: over twice PIL's limit
    (content / "README.txt").write_text("ignored: no image suffix\n")
    (content / "._good.png").write_bytes(b"\0\5\26\7" + b"\0" * 60)  # a macOS resource fork: hidden, skipped

    Image.new("RGB", (1, 1), (10, 200, 10)).save(content / "tiny.png")
    sixteen = Image.fromarray((_gradient(40, 40, 2)[..., 0].astype(np.uint16) * 257))
    assert sixteen.mode == "I;16"
    sixteen.save(content / "sixteen.png")
    Image.fromarray(_gradient(40, 40, 3)).convert("CMYK").save(content / "cmyk.jpg", "JPEG")
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 0, 200, 40, 40] + [0] * 762)
    palette.paste(1, (0, 0, 20, 40))  # left half red, right half transparent
    palette.save(content / "palette.png", transparency=0)
    frames = [Image.new("RGB", (40, 40), c) for c in (RED, (30, 200, 30), BLUE)]
    frames[0].save(content / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to display
    halves(80, 40).save(content / "rotated.jpg", exif=exif, quality=95)
    Image.fromarray(_gradient(40, 40, 4)[..., 1].astype(np.float32) / 255.0).save(content / "float.tif")
    big = Image.fromarray(_gradient(300, 400, 5)).resize((4000, 3000), Image.Resampling.BILINEAR)
    big.save(content / "big.jpg", quality=90)

    for i in range(2):
        Image.fromarray(_gradient(50, 50, 10 + i)[..., ::-1].copy()).save(style / f"style{i}.png")
    (style / "empty.webp").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory) -> Path:
    return write_bad_folder(tmp_path_factory.mktemp("inputs") / "user")


def test_unusable_inputs_give_one_error_line_each_and_the_rest_run(bad_folder, caplog):
    with caplog.at_level(logging.WARNING):
        p = registry.create_protocol("folder", root=str(bad_folder), resolution=64)
    errors = p.input_errors
    assert len(errors) == len(UNUSABLE), errors
    for name, words in UNUSABLE.items():
        lines = [e for e in errors if e.startswith(f"{bad_folder / name}:") or e.startswith(f"{bad_folder / name} (")]
        assert len(lines) == 1, (name, errors)
        assert words in lines[0] and any(fix in lines[0] for fix in ("remove it", "fix the link", "move it out"))
    assert all("\n" not in e and "Traceback" not in e for e in errors)
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert sorted(logged) == sorted(errors)
    assert {(x.content_id, x.style_id) for x in p.spec.pairs} == {(c, s) for c in USABLE for s in STYLES}
    for cid in USABLE:
        im = p.content(cid)
        assert im.mode == "RGB" and im.size == (64, 64), cid
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nothing imported on the way turned it on


def test_suspicious_inputs_give_one_warning_line_and_are_used(bad_folder, caplog):
    with caplog.at_level(logging.WARNING):
        registry.create_protocol("folder", root=str(bad_folder), resolution=64)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert all("\n" not in w for w in warnings)

    def about(name: str) -> list[str]:
        return [w for w in warnings if w.startswith(str(bad_folder / name))]

    assert len(about("content/tiny.png")) == 1 and "upscaled from 1×1 to 64×64" in about("content/tiny.png")[0]
    assert len(about("content/animated.gif")) == 1 and "3 frames" in about("content/animated.gif")[0]
    assert "ignored the other 2" in about("content/animated.gif")[0]
    assert len(about("content:")) == 1 and "README.txt" in about("content:")[0]  # no image suffix: not read
    quiet = ("good.png", "sixteen.png", "cmyk.jpg", "palette.png", "rotated.jpg", "float.tif", "big.jpg")
    assert not [w for w in warnings if any(f"content/{q}" in w for q in quiet)], warnings


def test_odd_but_valid_images_are_decoded_right(bad_folder):
    p = registry.create_protocol("folder", root=str(bad_folder), resolution=64)
    rotated = pil_to_array(p.content("content/rotated.jpg"))  # 80×40 stored, EXIF 6: upright is 40×80
    top, bottom = rotated[:16].mean((0, 1)), rotated[-16:].mean((0, 1))
    assert top[0] > 0.7 > top[2] and bottom[2] > 0.7 > bottom[0], "EXIF orientation 6: the left half goes on top"
    gif = pil_to_array(p.content("content/animated.gif")).mean((0, 1))
    assert gif[0] > 0.7 > gif[1], "the first frame (red)"
    palette = pil_to_array(p.content("content/palette.png"))
    assert palette[:, :24].mean((0, 1))[0] > 0.7 and palette[:, -24:].min() > 0.95, "transparent over white"
    sixteen = pil_to_array(p.content("content/sixteen.png"))
    assert 0.2 < sixteen.mean() < 0.8, "16-bit values scaled by the bit depth, not clipped"
    float_tif = pil_to_array(p.content("content/float.tif"))
    assert 0.2 < float_tif.mean() < 0.8
    tiny = pil_to_array(p.content("content/tiny.png"))
    assert np.allclose(tiny, np.array([10, 200, 10]) / 255, atol=1 / 255)
    cmyk = pil_to_array(p.content("content/cmyk.jpg"))
    assert 0.1 < cmyk.mean() < 0.9
    # a large JPEG is decoded at a reduced DCT scale: the result is the full decode's, to within JPEG noise
    big = pil_to_array(p.content("content/big.jpg"))
    full = pil_to_array(fit(load_image(bad_folder / "content/big.jpg"), 64))
    assert np.abs(big - full).mean() < 2 / 255 and np.abs(big - full).max() < 12 / 255


def test_manifest_with_unknown_columns_and_bad_rows(bad_folder, caplog):
    manifest = bad_folder / "pairs.csv"
    manifest.write_text(
        "content,style,style_family,note\n"
        "content/good.png,style/style0.png,oil,x\n"
        "content/tiny.png,style/style1.png,ink,y\n"
        "content/missing.png,style/style0.png,oil,z\n"
        ",style/style1.png,oil,\n"
        "content/truncated.png,style/style0.png,oil,\n"
        ",,,\n"
    )
    with caplog.at_level(logging.WARNING):
        p = registry.create_protocol("folder", root=str(manifest), resolution=32)
    assert [(x.content_id, x.style_id, x.family) for x in p.spec.pairs] == [
        ("content/good.png", "style/style0.png", "none"), ("content/tiny.png", "style/style1.png", "none")]
    unknown = [r.getMessage() for r in caplog.records if "unknown column" in r.getMessage()]
    assert len(unknown) == 1 and "style_family, note" in unknown[0]
    assert "content,style,target,pair_id,split,level,family" in unknown[0]
    assert len(p.input_errors) == 3, p.input_errors
    assert sum("content/missing.png: file not found" in e for e in p.input_errors) == 1
    assert sum("row 4 after the header has no content path" in e for e in p.input_errors) == 1
    assert sum("content/truncated.png" in e for e in p.input_errors) == 1


def test_decompression_bomb_below_the_hard_limit_is_an_error_too(tmp_path):
    path = tmp_path / "wide.png"
    path.write_bytes(png_header(10000, 10000))  # 100 M pixels: PIL only warns
    with pytest.raises(ValueError, match="too many pixels"):
        load_image(path)


def _pair_inputs(root: Path) -> dict[str, str]:
    return {x.pair_id: x.inputs for x in registry.create_protocol("folder", root=str(root), resolution=32).spec.pairs}


def test_inputs_digest_follows_the_bytes_not_the_place(tmp_path):
    def write(root: Path, seed: int) -> None:
        for sub, n in (("content", 2), ("style", 2)):
            (root / sub).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_gradient(40, 40, seed + 10 * i + (sub == "style"))).save(root / sub / f"{sub}{i}.png")

    write(tmp_path / "a", 0)
    write(tmp_path / "b", 100)  # the same file names, other pixels
    a, b = _pair_inputs(tmp_path / "a"), _pair_inputs(tmp_path / "b")
    assert a.keys() == b.keys() and len(set(a.values())) == 4 and all(a[k] != b[k] for k in a)

    shutil.copytree(tmp_path / "a", tmp_path / "moved" / "a")
    pa = registry.create_protocol("folder", root=str(tmp_path / "a"), resolution=32)
    pm = registry.create_protocol("folder", root=str(tmp_path / "moved" / "a"), resolution=32)
    assert pa.spec.params["root"] != pm.spec.params["root"]
    assert [x.inputs for x in pa.spec.pairs] == [x.inputs for x in pm.spec.pairs]
    assert [pa.spec.setup(x) for x in pa.spec.pairs] == [pm.spec.setup(x) for x in pm.spec.pairs]

    Image.fromarray(_gradient(40, 40, 7)).save(tmp_path / "moved" / "a" / "style" / "style1.png")  # an edit
    edited = _pair_inputs(tmp_path / "moved" / "a")
    assert {k for k in a if a[k] != edited[k]} == {"content0__style1", "content1__style1"}

    paper = registry.create_protocol("paper", root=str(tmp_path / "a"), resolution=32, pairs_per_style=2)
    by_images = {(x.content_id, x.style_id): x.inputs for x in pa.spec.pairs}
    assert paper.spec.pairs and all(x.inputs == by_images[x.content_id, x.style_id] for x in paper.spec.pairs)


def test_cli_run_on_bad_inputs_prints_one_line_per_file_and_runs_the_rest(bad_folder, tmp_path, capsys):
    from sxbench.cli import main

    args = ["run", "--protocol", str(bad_folder), "--methods", "identity", "--metrics", "content_ssim", "--out",
            str(tmp_path / "run"), "--no-progress", "--resolution", "32"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("input error: ")]
    assert len(lines) == len(UNUSABLE), err
    for name in UNUSABLE:
        assert sum(str(bad_folder / name) in line for line in lines) == 1, name
    assert "Traceback" not in out + err
    n = len(USABLE) * len(STYLES)
    assert f"{n} generated, 0 already stored, 0 failed" in out
    assert main(args) == 0
    assert f"0 generated, {n} already stored, 0 failed" in capsys.readouterr().out
