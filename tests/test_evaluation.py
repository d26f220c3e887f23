"""The evaluator: features once per (image, backbone), cached on disk across processes, each set metric on its own
backbone's features, expert statistics stored, and both producers (run, import) scoring through it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch

from sxbench import registry
from sxbench.evaluation import FEATURE_DIR, Evaluator, Item
from sxbench.features import FeatureCache, image_key
from sxbench.imageio import to_tensor
from sxbench.metrics.experts import EXPERT_METRICS, expert_stats
from sxbench.metrics.sets import SetMetric
from sxbench.records import MetricInfo
from sxbench.runner import RunConfig, Runner
from sxbench.store import Store

BACKBONE_METRICS = ("dino_content", "dino_structure", "vgg_content_loss", "vgg_gram_style", "stlpips_content")


class _Counting:
    """Wraps an extractor's forward to count the images it sees (per backbone)."""

    def __init__(self, monkeypatch) -> None:
        self.seen: dict[str, int] = {}
        from sxbench.backbones.models import FeatureExtractor

        orig = FeatureExtractor.__call__

        def call(ext, *args, **kwargs):
            if args and isinstance(args[0], torch.Tensor) and not kwargs:
                self.seen[ext.backbone] = self.seen.get(ext.backbone, 0) + args[0].shape[0]
            return orig(ext, *args, **kwargs)

        monkeypatch.setattr(FeatureExtractor, "__call__", call)


def _items(protocol, method: str, n: int) -> list[Item]:
    from sxbench.imageio import to_pil

    pairs = protocol.spec.pairs[:n]
    m = registry.create_method(method)
    outs = m.stylize_batch([protocol.content(p.content_id) for p in pairs], [protocol.style(p.style_id) for p in pairs],
                           seeds=[0] * len(pairs))
    return [Item(f"{method}-{p.pair_id}", p, to_pil(o)) for p, o in zip(pairs, outs)]


def test_each_image_passes_each_backbone_once(tiny_weights, tmp_path, monkeypatch):
    protocol = registry.create_protocol("synth-smoke")
    pairs = protocol.spec.pairs
    ev = Evaluator(protocol, pairs, (0,), metrics=BACKBONE_METRICS + ("fid",), weights_dir=str(tiny_weights),
                   run_dir=tmp_path, progress=False)
    count = _Counting(monkeypatch)
    identity = _items(protocol, "identity", len(pairs))  # outputs are the contents, pixel for pixel
    reinhard = _items(protocol, "reinhard", len(pairs))
    values = ev.score(identity)
    values |= ev.score(reinhard)
    contents = {image_key(protocol.content(p.content_id)) for p in pairs}
    styles = {image_key(protocol.style(p.style_id)) for p in pairs}
    outs = {image_key(it.image) for it in reinhard}
    assert not outs & (contents | styles)
    # DINO and ST-LPIPS read outputs and contents; identity's outputs are contents: computed once, not twice
    assert count.seen["dinov2-s"] == len(contents | outs)
    assert count.seen["stlpips-alex"] == len(contents | outs)
    assert count.seen["vgg19"] == len(contents | styles | outs)
    assert count.seen["inception"] == len(contents | styles | outs)  # set features collected while scoring
    assert all(len(v) == len(BACKBONE_METRICS) for v in values.values())
    # the cached path gives the values a metric computes alone, from the images
    metric = registry.create_metric("vgg_gram_style", weights_dir=str(tiny_weights))
    x = to_tensor([it.image for it in reinhard])
    s = to_tensor([protocol.style(it.pair.style_id) for it in reinhard])
    alone = metric.score(x, style=s).tolist()
    got = [next(v.value for v in values[it.key] if v.metric == "vgg_gram_style") for it in reinhard]
    assert got == pytest.approx(alone, rel=1e-5)


def test_reference_features_come_back_from_the_run_folder(tiny_weights, tmp_path, monkeypatch):
    protocol = registry.create_protocol("synth-smoke")
    pairs = protocol.spec.pairs
    kw = dict(metrics=("dino_content", "vgg_gram_style"), weights_dir=str(tiny_weights), run_dir=tmp_path,
              progress=False)
    ev = Evaluator(protocol, pairs, (0,), **kw)
    ev.score(_items(protocol, "identity", len(pairs)))  # the contents are first seen as outputs
    first = ev.score(_items(protocol, "reinhard", len(pairs)))
    files = list((tmp_path / FEATURE_DIR).rglob("*.safetensors"))
    assert files, "reference features are written to the run folder"
    count = _Counting(monkeypatch)
    again = Evaluator(protocol, pairs, (0,), **kw)  # another process, as far as the cache knows
    second = again.score(_items(protocol, "histmatch", len(pairs)))
    n_out = len({image_key(it.image) for it in _items(protocol, "histmatch", len(pairs))})
    assert count.seen == {"dinov2-s": n_out, "vgg19": n_out}, "only the new outputs pass through the backbones"
    assert again.cache.loaded == len({image_key(protocol.content(p.content_id)) for p in pairs}) + len(
        {image_key(protocol.style(p.style_id)) for p in pairs})
    # a damaged cache file is recomputed, not trusted
    files[0].write_bytes(b"not safetensors")
    third = Evaluator(protocol, pairs, (0,), **kw).score(_items(protocol, "reinhard", len(pairs)))
    for k in first:
        assert [v.value for v in third[k]] == pytest.approx([v.value for v in first[k]], rel=1e-5)
    assert all(len(v) == 2 for v in second.values())


class _DinoSpread(SetMetric):
    """A set metric on another backbone than Inception: the mean CLS-feature distance of outputs to styles."""

    backbone_name: ClassVar[str] = "dinov2-s"
    field: ClassVar[str] = "cls"
    min_samples: ClassVar[int] = 2
    info = MetricInfo("dino_spread", False, (0.0, float("inf")), "quality", frozenset({"style"}),
                      backbone="dinov2-s", scope="set", description="test")

    def compute(self, view):
        return float(np.linalg.norm(view.outputs["dinov2-s"] - view.styles["dinov2-s"], axis=1).mean())


def test_each_set_metric_gets_its_own_backbones_features(tiny_weights, tmp_path):
    registry.metrics.register("dino_spread", _DinoSpread)
    try:
        Runner(RunConfig("synth-smoke", methods=("reinhard",), metrics=("fid", "dino_spread"), out=tmp_path,
                         weights_dir=str(tiny_weights), progress=False)).run()
    finally:
        registry.metrics.unregister("dino_spread")
    with Store(tmp_path) as store:
        sv = store.set_values()
        samples = store.samples()
    got = sv[(sv.metric == "dino_spread") & (sv.subset == "all")].value.item()
    protocol = registry.create_protocol("synth-smoke")
    from sxbench.imageio import load_image
    from sxbench.weights import load_extractor

    ext = load_extractor("dinov2-s", "cpu", tiny_weights)
    rows = samples.sort_values("sample_key")
    with torch.no_grad():
        fo = ext(to_tensor([load_image(tmp_path / r) for r in rows.output_path]))["cls"].double().numpy()
        fs = ext(to_tensor([protocol.style(s) for s in rows.style_id]))["cls"].double().numpy()
    assert got == pytest.approx(float(np.linalg.norm(fo - fs, axis=1).mean()), rel=1e-5)
    assert len(sv[sv.metric == "fid"]) == 1 + samples.split.nunique()  # all and each split


def test_expert_statistics_are_stored_and_exported(tmp_path, tiny_weights):
    from sxbench.report import export

    # the committed checkpoint routes with the registry DINOv2-S: here random weights of the real class
    Runner(RunConfig("synth-smoke", methods=("styleexpert", "reinhard"), metrics=("content_ssim",), out=tmp_path,
                     progress=False, weights_dir=tiny_weights)).run()
    with Store(tmp_path) as store:
        sv = store.set_values()
        routing = store.routing()
        registered = store.metrics()
    experts = sv[sv.metric_group == "experts"]
    assert set(experts.method) == {"styleexpert"}, "only the mixture method has expert statistics"
    assert set(experts.metric) == {m.info.name for m in EXPERT_METRICS} <= set(registered)
    want = expert_stats(routing, int(routing.num_experts.iloc[0])).values
    for r in experts.itertuples():
        assert (np.isnan(want[r.metric]) and pd.isna(r.value)) or r.value == pytest.approx(want[r.metric]), r.metric
        assert r.n == routing.style_id.nunique()
    before = sqlite3.connect(tmp_path / "results.sqlite").execute("SELECT computed FROM set_values").fetchall()
    Runner(RunConfig("synth-smoke", methods=("styleexpert", "reinhard"), metrics=("content_ssim",), out=tmp_path,
                     progress=False, weights_dir=tiny_weights)).run()
    after = sqlite3.connect(tmp_path / "results.sqlite").execute("SELECT computed FROM set_values").fetchall()
    assert before == after, "unchanged samples: nothing recomputed"
    csv = pd.read_csv(export(tmp_path, "csv"))
    assert set(csv[csv.metric.isin(want)].metric) == set(want)


def test_run_and_import_hand_their_outputs_to_the_same_evaluator(tmp_path):
    from sxbench.imported import Importer

    cfg = RunConfig("synth-smoke", methods=("reinhard",), metrics=("content_ssim",), out=tmp_path, progress=False)
    assert type(Runner(cfg).evaluator) is type(Importer(cfg).evaluator) is Evaluator
    assert Runner not in Importer.__mro__ and Importer not in Runner.__mro__


def test_feature_cache_computes_a_repeated_key_once():
    calls = []

    class Ext(torch.nn.Module):
        backbone, resolution, weights_sha256 = "toy", 4, "0" * 64

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            calls.append(len(x))
            return {"m": x.mean((1, 2, 3)) * self.w}

    cache, ext = FeatureCache(), Ext()
    x = torch.rand(3, 3, 4, 4)
    got = cache.features(ext, torch.stack([x[0], x[1], x[0]]), ["a", "b", "a"])
    assert calls == [2] and torch.equal(got["m"][0], got["m"][2])
    cache.features(ext, x[:2], ["a", "b"])
    assert calls == [2], "memory hit"


def test_backbones_never_import_the_weights_module():
    """The dependency runs one way: ``sxbench.weights`` builds backbones; ``sxbench.backbones`` does not import it."""
    import subprocess
    import sys

    mods = ["sxbench.backbones." + p.stem for p in (Path(registry.__file__).parent / "backbones").glob("*.py")
            if p.stem != "__init__"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods)
            + "bad = [m for m in sys.modules if m == 'sxbench.weights']\nprint(bad)\nsys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_reference_read_back_with_some_fields_is_not_an_output_with_all(tiny_weights, tmp_path):
    """``stylecopy``'s outputs are the style images: their feature file holds the Grams only (what the style role
    reads), so a later process must compute relu4_2 for ``vgg_content_loss`` instead of dropping the metric."""
    protocol = registry.create_protocol("synth-smoke")
    pairs = protocol.spec.pairs
    kw = dict(metrics=("vgg_gram_style", "vgg_content_loss"), weights_dir=str(tiny_weights), run_dir=tmp_path,
              progress=False)
    Evaluator(protocol, pairs, (0,), **kw).score(_items(protocol, "reinhard", len(pairs)))  # writes the styles' Grams
    copies = _items(protocol, "stylecopy", len(pairs))
    got = Evaluator(protocol, pairs, (0,), **kw).score(copies)
    metric = registry.create_metric("vgg_content_loss", weights_dir=str(tiny_weights))
    x = to_tensor([it.image for it in copies])
    c = to_tensor([protocol.content(it.pair.content_id) for it in copies])
    want = metric.score(x, content=c).tolist()
    assert [next(v.value for v in got[it.key] if v.metric == "vgg_content_loss") for it in copies] == pytest.approx(
        want, rel=1e-5)
    assert all({v.metric for v in got[it.key]} == {"vgg_gram_style", "vgg_content_loss"} for it in copies)
