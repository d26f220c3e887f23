"""No test images in training: no image of any protocol's evaluation set is in a trained method's training set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sxbench.protocols import photos
from sxbench.protocols.synth import synth, synth_smoke
from sxbench.records import file_sha256, pixel_digest

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = sorted(p.parent for p in ROOT.glob("*/checkpoints/*/config.json"))


@pytest.fixture(scope="module")
def evaluation_digests() -> dict[str, str]:
    """Pixel digest → what it is, for every image the synth protocols evaluate on (contents, style references,
    targets; ``synth-lite`` is a subset of ``synth``) and the photos protocol's pictures."""
    out = {}
    for p in (synth(), synth_smoke()):
        name = p.spec.name
        for cid in {x.content_id for x in p.spec.pairs}:
            out[pixel_digest(p.content(cid))] = f"{name} content {cid}"
        for sid in {x.style_id for x in p.spec.pairs}:
            out[pixel_digest(p.style(sid))] = f"{name} style {sid}"
        for x in p.spec.pairs:
            out[pixel_digest(p.target(x.pair_id))] = f"{name} target {x.pair_id}"
    from sxbench.imageio import load_image

    for path in photos.evaluation_files():
        out[pixel_digest(load_image(path))] = f"photos {path.name}"
    return out


@pytest.mark.parametrize("folder", CHECKPOINTS, ids=lambda p: p.name)
def test_no_evaluation_image_in_training(folder, evaluation_digests):
    record = json.loads((folder / "config.json").read_text()).get("training_data")
    assert record and record.get("image_digests"), f"{folder}: no training_data record with image digests"
    trained = set((folder / record["image_digests"]).read_text().split())
    assert len(trained) > 100
    leaked = sorted(evaluation_digests[d] for d in trained & evaluation_digests.keys())
    assert not leaked, f"{folder.name} was trained on evaluation images: {leaked[:10]}"
    # bundled photographs: by source name (near-duplicates too) and by the file's bytes
    evaluated = {p.name for p in photos.evaluation_files()} | set(photos.NEAR_DUPLICATES)
    evaluated_sha = {file_sha256(p) for p in photos.evaluation_files()}
    for src in record.get("photos", []):
        assert src["name"] not in evaluated and src["sha256"] not in evaluated_sha, (folder.name, src)


def test_adain_training_photos_leave_out_every_evaluated_picture():
    from baselines.adain import _skimage_images

    images, sources = _skimage_images()
    names = {s["name"] for s in sources}
    assert len(images) == len(sources) >= 5
    assert not names & (set(photos.CONTENTS) | set(photos.STYLES) | set(photos.NEAR_DUPLICATES))
    evaluated_sha = {file_sha256(p) for p in photos.evaluation_files()}
    assert not {s["sha256"] for s in sources} & evaluated_sha


def test_a_renamed_copy_of_an_evaluated_photo_is_recognised(tmp_path):
    copy = tmp_path / "my_cat.png"
    copy.write_bytes(photos.evaluation_files()[1].read_bytes())
    assert photos.is_evaluation_photo(copy)
    other = tmp_path / "other.png"
    other.write_bytes(b"not a picture of the protocol")
    assert not photos.is_evaluation_photo(other)


def test_pixel_digest_sees_pixels_not_files(tmp_path):
    from PIL import Image

    from sxbench.imageio import load_image

    src = photos.evaluation_files()[0]
    im = load_image(src)
    im.save(tmp_path / "a.png", compress_level=1)
    im.save(tmp_path / "b.png", compress_level=9)
    assert file_sha256(tmp_path / "a.png") != file_sha256(tmp_path / "b.png")
    assert pixel_digest(Image.open(tmp_path / "a.png")) == pixel_digest(Image.open(tmp_path / "b.png")) == pixel_digest(im)
    assert pixel_digest(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) != pixel_digest(im)
