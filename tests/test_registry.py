import math
import re
from pathlib import Path

import pytest

from sxbench import registry
from sxbench.interfaces import ImageMetric, Method, Protocol


def test_in_repo_plugins_arrive_through_entry_points():
    assert {"identity", "stylecopy", "reinhard", "histmatch"} <= set(registry.methods.names())
    assert {"content_ssim", "content_edge_f1", "style_color_swd", "style_gram", "target_psnr", "target_ssim",
            "target_detail"} <= set(registry.metrics.names())
    assert {"synth", "synth-smoke", "photos", "folder"} <= set(registry.protocols.names())
    assert all(registry.methods._eps()[n].group == "sxbench.methods" for n in ("identity", "reinhard"))


def test_factories_return_real_objects():
    assert isinstance(registry.create_method("reinhard"), Method)
    assert isinstance(registry.create_metric("content_ssim"), ImageMetric)
    assert isinstance(registry.create_protocol("synth-smoke"), Protocol)


def test_typo_suggests_close_names():
    with pytest.raises(registry.UnknownNameError, match="Did you mean 'reinhard'"):
        registry.create_method("reinhart")
    with pytest.raises(registry.UnknownNameError, match="sxbench list metrics"):
        registry.create_metric("no_such_metric_at_all")


def test_module_attr_targets_and_manual_registration():
    cls = registry.methods.get("baselines.identity:Identity")
    assert cls.name == "identity"
    registry.methods.register("copy2", "baselines.stylecopy:StyleCopy")
    try:
        assert "copy2" in registry.methods and registry.create_method("copy2").name == "stylecopy"
    finally:
        registry.methods.unregister("copy2")
    assert "copy2" not in registry.methods


def _readme_metric_table() -> dict[str, tuple[str, bool]]:
    """``name → (group, higher_is_better)`` from the README's metrics table: ``| `a`, `b` | group | ↑ | what |``."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rows = {}
    for line in text[text.index("### Metrics"):].splitlines()[1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[2] in ("↑", "↓"):
            for name in re.findall(r"`([a-z0-9_]+)`", cells[0]):
                rows[name] = (cells[1], cells[2] == "↑")
    return rows


PAPER_METRICS = {  # the StyleExpert paper's scores, not in the README's table: similarities and ratings
    "clip_content": ("fidelity", True, (-100.0, 100.0)),  # cosine ×100
    "clip_style": ("style", True, (-100.0, 100.0)),  # cosine ×100
    "csd_style": ("style", True, (-100.0, 100.0)),  # cosine ×100
    "aesthetic": ("quality", True, None),  # a predicted 1–10 rating
    "vlm_semantic": ("style", True, (0.0, 100.0)),  # the judge's 0–100 score
}

KNOWN_RANGES = {  # by definition
    "content_ssim": (-1.0, 1.0), "target_ssim": (-1.0, 1.0), "content_edge_f1": (0.0, 1.0),
    "dino_content": (-100.0, 100.0), "fid": (0.0, math.inf), "artfid_st": (1.0, math.inf),  # (1 + d)·(1 + FID)
    "style_color_swd": (0.0, math.inf), "style_gram": (0.0, math.inf), "vgg_gram_style": (0.0, math.inf),
}


def test_metrics_describe_themselves():
    """Every metric's class-level info (backbone metrics need weights to be created; see test_weights.py), against
    expectations kept outside the code: the README's metrics table (group, which way is better), the paper
    metrics' definitions and the ranges some metrics have by definition."""
    from sxbench.weights import BACKBONES

    readme = _readme_metric_table()
    assert {"content_ssim", "target_psnr", "target_ssim", "fid", "kid", "lpips_content_vgg"} <= set(readme)
    assert readme["content_ssim"] == ("fidelity", True) and readme["fid"] == ("quality", False)
    expected = readme | {n: v[:2] for n, v in PAPER_METRICS.items()}
    assert set(registry.metrics.names()) <= set(expected), "a metric missing from the README's metrics table"
    for name in registry.metrics.names():
        cls = registry.metrics.get(name)
        i = cls.info
        assert i.name == name
        assert (i.group, i.higher_is_better) == expected[name], name
        assert i.requires <= {"content", "style", "target"} and (i.requires or i.group == "quality")
        assert i.range[0] < i.range[1]
        want_range = KNOWN_RANGES.get(name) or PAPER_METRICS.get(name, (None, None, None))[2]
        if want_range:
            assert i.range == want_range, name
        assert i.backbone is None or i.backbone in BACKBONES
        if i.backbone is None:  # an instance describes itself the same way
            assert registry.create_metric(name).info.higher_is_better is expected[name][1]
