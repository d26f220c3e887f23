"""The orderings the default `synth` protocol must show with the baselines (the issue's acceptance)."""

import pytest

from sxbench import registry
from sxbench.runner import RunConfig, Runner
from sxbench.store import Store


METHODS = ("identity", "stylecopy", "reinhard", "histmatch")
METRICS = ("content_ssim", "style_color_swd", "target_ssim")


@pytest.fixture(scope="module")
def synth_values(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    Runner(RunConfig("synth", methods=METHODS, out=out, metrics=METRICS, batch_size=16, progress=False)).run()
    with Store(out) as st:
        return st.values()


def _means(df, metric):
    return df[df.metric == metric].groupby("method").value.mean()


def test_identity_best_on_content_ssim(synth_values):
    m = _means(synth_values, "content_ssim")
    assert m.idxmax() == "identity" and (m.drop("identity") < m["identity"]).all()


def test_stylecopy_best_on_style_color_swd(synth_values):
    m = _means(synth_values, "style_color_swd")
    assert m.idxmin() == "stylecopy"


def test_reinhard_fails_beyond_colour(synth_values):
    r = synth_values[(synth_values.metric == "target_ssim") & (synth_values.method == "reinhard")]
    by_level = r.groupby("level").value.mean()
    for level in ("texture", "material", "stroke"):
        assert by_level["color"] > by_level[level], by_level.to_dict()


def test_rows_carry_split_and_level(synth_values):
    """Every stored value carries its pair's labels as the protocol defines them, and no value is missing."""
    pairs = {p.pair_id: p for p in registry.create_protocol("synth").spec.pairs}
    assert len(synth_values) == len(pairs) * len(METHODS) * len(METRICS)
    assert set(synth_values.split) == {"seen", "unseen"}
    assert set(synth_values.level) == {"color", "texture", "material", "stroke"}
    labels = {(p.pair_id, p.split, p.level, p.family, p.content_id, p.style_id) for p in pairs.values()}
    stored = set(zip(synth_values.pair_id, synth_values.split, synth_values.level, synth_values.family,
                     synth_values.content_id, synth_values.style_id))
    assert stored == labels
