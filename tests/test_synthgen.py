import numpy as np
import pytest

from sxbench.protocols import synthgen
from sxbench.protocols.synthgen import FAMILIES, LEVELS


def test_scene_is_deterministic_and_has_ground_truth():
    a, b = synthgen.make_scene(7, 64), synthgen.make_scene(7, 64)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.instances, b.instances)
    assert a.image.shape == (64, 64, 3) and a.image.dtype == np.float32
    assert 0 <= a.image.min() and a.image.max() <= 1
    assert a.instances.max() == len(a.object_classes) >= 1
    assert set(np.unique(a.classes)) <= set(range(len(synthgen.CLASSES) + 1))
    assert a.edges.any() and a.edges.mean() < 0.3
    assert not np.array_equal(a.image, synthgen.make_scene(8, 64).image)


def test_scenes_cover_classes_and_backgrounds():
    classes = set()
    for s in range(40):
        classes |= set(synthgen.make_scene(s, 48).object_classes)
    assert classes == set(synthgen.CLASSES)


def test_families_span_four_levels_with_holdouts():
    assert len(FAMILIES) >= 16
    by_level = {lv: [f for f in FAMILIES.values() if f.level == lv] for lv in LEVELS}
    assert all(len(v) >= 4 for v in by_level.values())
    assert all(sum(f.held_out for f in v) >= 1 for v in by_level.values())
    assert all(f.params for f in FAMILIES.values())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_stylizes_deterministically_and_continuously(family):
    img = synthgen.make_scene(3, 64).image
    fam = FAMILIES[family]
    lo = {p: 0.0 for p, _, _ in fam.params}
    hi = {p: 1.0 for p, _, _ in fam.params}
    out = synthgen.apply_style(img, family, lo, 5)
    assert out.shape == img.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert 0 <= out.min() and out.max() <= 1
    np.testing.assert_array_equal(out, synthgen.apply_style(img, family, lo, 5))
    assert np.abs(out - img).mean() > 0.01, "a style must change the image"
    assert np.abs(out - synthgen.apply_style(img, family, hi, 5)).mean() > 1e-3, "parameters must matter"


HELD_OUT_FAMILIES = {"gradient_map", "canvas", "stone", "pixel_art"}
"""The unseen split's families, as sxbench/protocols/synth.py documents them."""


def test_seen_training_data_lies_in_the_seen_range_and_shares_no_scene_with_the_benchmark(tmp_path):
    """`sxbench data synth --split seen`: seen families only, every parameter u in the seen range [0, 0.7] (the
    held-out top range is [0.8, 1]), the images made by the recorded parameters, and no content or reference
    scene that the synth, synth-lite or synth-smoke benchmark shows."""
    import csv
    import json

    from PIL import Image

    from sxbench.cli import main
    from sxbench.imageio import array_to_pil
    from sxbench.protocols.synth import synth, synth_lite, synth_smoke, training_scene_seeds

    n, res = 60, 48
    assert main(["data", "synth", "--out", str(tmp_path), "--n", str(n), "--split", "seen", "--resolution", str(res),
                 "--no-progress"]) == 0
    rows = list(csv.DictReader((tmp_path / "manifest.csv").open()))
    assert len(rows) == n

    def png(rel):
        return np.asarray(Image.open(tmp_path / rel).convert("RGB"))

    def rendered(img):
        return np.asarray(array_to_pil(img))

    training_scenes = set()
    for i, row in enumerate(rows):
        fam = FAMILIES[row["family"]]
        assert row["split"] == "seen" and row["family"] not in HELD_OUT_FAMILIES and not fam.held_out
        assert row["level"] == fam.level
        params = json.loads(row["params"])
        u, style_seed = params["u"], params["seed"]
        assert set(u) == {name for name, _, _ in fam.params}
        assert all(0.0 <= v <= 0.7 for v in u.values()), (row["pair_id"], u)
        # the recorded parameters are the ones that made the style reference and the target
        content_seed, reference_seed = training_scene_seeds(i)
        content = synthgen.make_scene(content_seed, res).image
        reference = synthgen.make_scene(reference_seed, res).image
        style = synthgen.apply_style(reference, fam.name, u, style_seed + 1)
        np.testing.assert_array_equal(png(row["content"]), rendered(content))
        np.testing.assert_array_equal(png(row["style"]), rendered(style))
        target = synthgen.apply_style(content, fam.name, u, style_seed)
        np.testing.assert_array_equal(png(row["target"]), rendered(target))
        training_scenes |= {rendered(content).tobytes(), rendered(reference).tobytes()}
    assert len({r["family"] for r in rows}) >= 12, "the sample covers most seen families"
    assert len(training_scenes) == 2 * n

    for protocol in (synth(res), synth_lite(res), synth_smoke(res)):
        contents = {np.asarray(protocol.content(c)).tobytes() for c in {p.content_id for p in protocol.spec.pairs}}
        references = {rendered(synthgen.make_scene(st.reference_seed, res).image).tobytes()
                      for st in protocol.styles.values()}
        assert not training_scenes & contents, f"{protocol.spec.name}: a training scene is a benchmark content"
        assert not training_scenes & references, f"{protocol.spec.name}: a training scene is a benchmark reference"
