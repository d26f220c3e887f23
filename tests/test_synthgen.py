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
