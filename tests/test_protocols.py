import csv
import logging

import numpy as np
import pytest
from PIL import Image

from sxbench import registry
from sxbench.imageio import pil_to_array
from sxbench.protocols.synth import HELD_OUT_RANGE, SEEN_RANGE, SYNTH_METRICS, synth, synth_smoke, write_triplets
from sxbench.protocols.synthgen import FAMILIES, LEVELS


def test_synth_has_both_splits_all_levels_and_enough_pairs():
    p = synth()
    pairs = p.spec.pairs
    assert len(pairs) >= 200
    assert len({x.pair_id for x in pairs}) == len(pairs)
    assert {x.split for x in pairs} == {"seen", "unseen"}
    for split in ("seen", "unseen"):
        assert {x.level for x in pairs if x.split == split} == set(LEVELS)
    assert len({x.family for x in pairs}) == len(FAMILIES)
    assert all(x.has_target for x in pairs)


def test_synth_unseen_holds_out_families_and_parameter_ranges():
    p = synth()
    seen_families = {s.family for s in p.styles.values() if s.split == "seen"}
    held = {f.name for f in FAMILIES.values() if f.held_out}
    assert not (seen_families & held)
    unseen_families = {s.family for s in p.styles.values() if s.split == "unseen"}
    assert len(held) == 4 and held <= unseen_families  # both kinds of unseen style occur
    assert seen_families and unseen_families - held == seen_families
    for st in p.styles.values():
        primary = FAMILIES[st.family].params[0][0]
        if st.split == "seen":
            assert all(SEEN_RANGE[0] <= v <= SEEN_RANGE[1] for v in st.u.values())
        elif st.family not in held:
            assert HELD_OUT_RANGE[0] <= st.u[primary] <= HELD_OUT_RANGE[1]


def test_synth_triplet_structure():
    p = synth_smoke()
    pair = p.spec.pairs[0]
    content, style, target = (pil_to_array(im) for im in (p.content(pair.content_id), p.style(pair.style_id), p.target(pair.pair_id)))
    assert content.shape == style.shape == target.shape == (64, 64, 3)
    # the reference is the style on another scene; the target is the style on this content
    assert np.abs(style - target).mean() > 0.05
    assert np.abs(content - target).mean() > 0.01
    again = synth_smoke()
    np.testing.assert_array_equal(pil_to_array(again.target(pair.pair_id)), target)


def test_smoke_preset_is_small_and_covers_levels_and_splits():
    p = synth_smoke()
    assert len(p.spec.pairs) <= 10
    assert {(x.split, x.level) for x in p.spec.pairs} == {(s, lv) for s in ("seen", "unseen") for lv in LEVELS}


def test_synth_lite_is_synths_56_styles_with_one_content_each():
    """README: `synth-lite`, what command 1 runs, is "synth's 56 styles with one content each: 56 pairs at 128², both
    splits, all levels"; checked against `synth` itself."""
    lite, full = registry.create_protocol("synth-lite"), synth()
    spec = lite.spec
    assert (spec.name, spec.resolution, len(spec.pairs), spec.seeds) == ("synth-lite", 128, 56, (0,))
    assert spec.metrics == full.spec.metrics == SYNTH_METRICS
    # the same 56 styles as synth (ids, families, parameters, pattern seeds), each in exactly one pair
    assert len(full.styles) == 56 and lite.styles == full.styles
    assert [p.style_id for p in spec.pairs] == list(full.styles)
    assert len({p.pair_id for p in spec.pairs}) == 56
    for p in spec.pairs:
        st = full.styles[p.style_id]
        assert (p.split, p.level, p.family, p.has_target) == (st.split, st.level, st.family, True), p
    assert {p.content_id for p in spec.pairs} <= {q.content_id for q in full.spec.pairs}  # synth's scenes
    # synth's docstring: seen 16 families × 2 styles, unseen 16 × 1 held-out-range style + 4 held-out families × 2
    splits = [p.split for p in spec.pairs]
    assert (splits.count("seen"), splits.count("unseen")) == (32, 24)
    assert {(p.split, p.level) for p in spec.pairs} == {(s, lv) for s in ("seen", "unseen") for lv in LEVELS}
    assert {p.family for p in spec.pairs} == set(FAMILIES)
    # the same images: a style reference and a content scene, pixel for pixel
    p = spec.pairs[-1]
    assert np.array_equal(pil_to_array(lite.style(p.style_id)), pil_to_array(full.style(p.style_id)))
    assert np.array_equal(pil_to_array(lite.content(p.content_id)), pil_to_array(full.content(p.content_id)))
    assert lite.content(p.content_id).size == (128, 128)


def test_synth_lite_runs_end_to_end_from_the_command_line(tmp_path, monkeypatch, capsys):
    """README command 1's run, cut down (one control, one weight-free metric, 32²), run twice from a folder where
    `--out synth-lite` made a `synth-lite/` directory: the name still means the protocol, and nothing reruns."""
    from sxbench.cli import main
    from sxbench.store import Store

    monkeypatch.chdir(tmp_path)
    args = ["run", "--protocol", "synth-lite", "--methods", "identity", "--metrics", "content_ssim", "--resolution",
            "32", "--out", "synth-lite", "--no-progress"]
    assert main(args) == 0
    assert "56 generated, 0 already stored, 0 failed" in capsys.readouterr().out
    assert main(args) == 0, capsys.readouterr().err
    assert "0 generated, 56 already stored, 0 failed" in capsys.readouterr().out
    with Store(tmp_path / "synth-lite") as st:
        values = st.values()
    spec = registry.create_protocol("synth-lite").spec
    want = {(p.pair_id, p.split, p.level) for p in spec.pairs}
    assert set(zip(values.pair_id, values.split, values.level)) == want and len(values) == 56
    assert values.protocol.unique().tolist() == ["synth-lite"]
    np.testing.assert_allclose(values.value, 1.0, atol=1e-3)  # identity: SSIM of the content with itself (float32)


def test_photos_protocol_uses_packaged_images_only():
    p = registry.create_protocol("photos", resolution=64)
    assert len(p.spec.pairs) >= 20
    pair = p.spec.pairs[0]
    assert p.content(pair.content_id).size == (64, 64)
    assert p.style(pair.style_id).mode == "RGB"
    assert p.target(pair.pair_id) is None
    inputs = [x.inputs for x in p.spec.pairs]  # digests of the two files' bytes: one per (content, style)
    assert len(set(inputs)) == len(inputs) and all(len(i) == 16 for i in inputs)
    assert [x.inputs for x in registry.create_protocol("photos", resolution=32).spec.pairs] == inputs


def test_folder_protocol_reports_one_line_for_corrupt_and_runs_the_rest(odd_folder, caplog):
    root, files = odd_folder
    with caplog.at_level(logging.ERROR):
        p = registry.create_protocol("folder", root=str(root), resolution=32)
    assert len(p.input_errors) == 1
    assert str(files["corrupt"]) in p.input_errors[0] and "re-export" in p.input_errors[0]
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    contents = {x.content_id for x in p.spec.pairs}
    assert contents == {"content/cmyk.jpg", "content/sixteen.png", "content/rgba.png", "content/wide.png"}
    assert len(p.spec.pairs) == 4 * 2
    for cid in contents:
        im = p.content(cid)
        assert im.mode == "RGB" and im.size == (32, 32)
    six = pil_to_array(p.content("content/sixteen.png"))
    assert 0.2 < six.mean() < 0.8, "16-bit values must be scaled, not clipped"


def test_folder_manifest_with_targets(tmp_path):
    out = tmp_path / "trip"
    manifest = write_triplets(out, 5, "seen", resolution=32, progress=False)
    rows = list(csv.DictReader(manifest.open()))
    assert len(rows) == 5 and all(r["split"] == "seen" for r in rows)
    assert all(not FAMILIES[r["family"]].held_out for r in rows)
    p = registry.create_protocol("folder", root=str(manifest), resolution=32)
    assert len(p.spec.pairs) == 5 and all(x.has_target for x in p.spec.pairs)
    assert "target_ssim" in p.spec.metrics
    assert p.spec.pairs[0].level in LEVELS and p.spec.pairs[0].pair_id == rows[0]["pair_id"]
    assert p.target(p.spec.pairs[0].pair_id).size == (32, 32)
    assert (out / "masks" / f"{rows[0]['pair_id']}.png").is_file()
    # the target's bytes are part of the pair's inputs: re-rendering one target changes that pair only
    before = {x.pair_id: x.inputs for x in p.spec.pairs}
    target = out / rows[0]["target"]
    Image.open(target).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(target)
    again = registry.create_protocol("folder", root=str(manifest), resolution=32)
    after = {x.pair_id: x.inputs for x in again.spec.pairs}
    assert {k for k in before if before[k] != after[k]} == {rows[0]["pair_id"]}


def test_folder_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="content/ and style/"):
        registry.create_protocol("folder", root=str(tmp_path))
    bad = tmp_path / "m.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="lacks column"):
        registry.create_protocol("folder", root=str(bad))
