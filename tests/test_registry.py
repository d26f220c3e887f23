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


def test_metrics_describe_themselves():
    """Every metric's class-level info (backbone metrics need weights to be created; see test_weights.py)."""
    from sxbench.weights import BACKBONES

    for name in registry.metrics.names():
        cls = registry.metrics.get(name)
        i = cls.info
        assert i.name == name
        assert i.group in {"fidelity", "style", "detail", "quality", "experts", "efficiency"}
        assert i.requires <= {"content", "style", "target"} and (i.requires or i.group == "quality")
        assert i.range[0] < i.range[1]
        assert i.backbone is None or i.backbone in BACKBONES
        if i.backbone is None:
            assert registry.create_metric(name).higher_is_better is i.higher_is_better  # torchmetrics mirrors info
