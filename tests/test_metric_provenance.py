"""Provenance in sight: every metric on a pretrained backbone names, in its description, the backbone that
really computes it, and says "the paper's" only where that backbone is the one the paper names."""

from __future__ import annotations

import pytest

from sxbench import registry, weights
from sxbench.metrics.backbone import backbone_provenance

PAPER_BACKBONES = {"csd-vit-l", "dreamsim-ensemble"}
"""Backbones the StyleExpert paper names (PAPER.md §5: learn2phoenix/CSD, ssundaram21/dreamsim). Its CLIP and DINO
variants, aesthetic predictor and Qwen model are not given, so a description of those does not say "the paper's"."""

CAVEATS = {"dinov2-s": "not facebook/dinov2-small", "vgg19": "8-bit k-means", "inception": "torch-fidelity"}
"""Departures a reader must see next to the value: in the backbone's caveat and in every description on it."""


def _metrics_on_backbones() -> list[tuple[str, object]]:
    out = []
    for name in registry.metrics.names():
        info = getattr(registry.metrics.get(name), "info", None)
        if info is not None and info.backbone:
            out.append((name, info))
    return out


METRICS = _metrics_on_backbones()


def short_label(label: str) -> str:
    """A backbone label's network name: the part before its parenthesised source (``"DINOv2-S"``)."""
    return label.split(" (")[0]


def test_every_pretrained_metric_is_checked():
    names = {n for n, _ in METRICS}
    assert {"dino_content", "dino_structure", "vgg_content_loss", "vgg_gram_style", "cfsd", "stlpips_content",
            "lpips_content", "clip_content", "csd_style", "dreamsim_style", "aesthetic", "vlm_semantic", "fid", "kid",
            "artfid_st"} <= names


@pytest.mark.parametrize(("name", "info"), METRICS, ids=[n for n, _ in METRICS])
def test_description_names_its_backbone(name, info):
    label, caveat = backbone_provenance(info.backbone)
    assert short_label(label) in info.description, (name, label, info.description)
    assert name in weights.get(info.backbone).metrics, f"{info.backbone} does not list {name} (sxbench weights list)"
    if info.backbone in CAVEATS:
        assert CAVEATS[info.backbone] in info.description, (name, info.description)


@pytest.mark.parametrize(("name", "info"), METRICS, ids=[n for n, _ in METRICS])
def test_no_paper_claim_on_another_backbone(name, info):
    if info.backbone not in PAPER_BACKBONES:
        assert "the paper's" not in info.description.lower(), (name, info.description)


@pytest.mark.parametrize("name", list(weights.BACKBONES))
def test_every_backbone_has_a_label_and_says_where_it_differs(name):
    label, caveat = backbone_provenance(name)
    b = weights.get(name)
    assert (label, caveat) == (b.label, b.caveat)
    assert short_label(label) and short_label(label) != label, "label: '<network> (<where the weights come from>)'"
    if name in CAVEATS:
        assert CAVEATS[name] in caveat
    assert "facebook/dinov2-small" not in label


def test_provenance_of_a_stored_backbone_and_an_unknown_one():
    assert backbone_provenance("dinov2-s@0123456789ab") == backbone_provenance("dinov2-s")
    assert short_label(backbone_provenance("dinov2-s")[0]) == "DINOv2-S"
    with pytest.raises(KeyError, match="known:"):
        backbone_provenance("dinov3-h")
