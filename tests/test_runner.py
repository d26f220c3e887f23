"""The runner in-process: failures isolated, resumable, rescoring, batch independence."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest
from PIL import Image

from sxbench import registry
from sxbench.interfaces import Method
from sxbench.runner import RunConfig, Runner, run
from sxbench.store import Store


class Flaky(Method):
    """Fails on the first content by raising and on the second by returning NaN; identity otherwise."""

    name = "flaky"

    def __init__(self, *, device="cpu", bad: Sequence[bytes] = ()):
        super().__init__(device=device)
        self.bad = list(bad)

    def stylize_batch(self, contents, styles, *, seeds):
        out = []
        for c in contents:
            b = c.tobytes()
            if b == self.bad[0]:
                raise RuntimeError("deliberate failure")
            out.append(np.full((c.height, c.width, 3), np.nan, np.float32) if b == self.bad[1] else c)
        return out


@pytest.fixture
def flaky():
    p = registry.create_protocol("synth-smoke")
    bad = [p.content(p.spec.pairs[i].content_id).tobytes() for i in (0, 1)]

    class Configured(Flaky):
        def __init__(self, *, device="cpu"):
            super().__init__(device=device, bad=bad)

    registry.methods.register("flaky", Configured)
    yield p
    registry.methods.unregister("flaky")


def test_one_failing_pair_is_recorded_and_the_run_goes_on(tmp_path, flaky):
    pairs = flaky.spec.pairs
    raising = {p.pair_id for p in pairs if p.content_id == pairs[0].content_id}
    nan = {p.pair_id for p in pairs if p.content_id == pairs[1].content_id}
    s = Runner(RunConfig("synth-smoke", methods=("flaky", "identity"), out=tmp_path, batch_size=4, progress=False)).run()
    assert raising and nan and not raising & nan  # both kinds of failure occur, on different pairs
    n_bad = len(raising | nan)
    assert n_bad < len(pairs)
    assert s.failed == n_bad and s.generated == 2 * len(pairs) - n_bad
    with Store(tmp_path) as st:
        samples = st.samples()
        values = st.values()
    err = samples[samples.status == "error"].set_index("pair_id").error
    assert all("RuntimeError: deliberate failure" in err[p] for p in raising)
    assert all("non-finite" in err[p] for p in nan)
    assert len(samples) == 2 * len(pairs) and samples.sample_key.is_unique
    assert set(values[values.method == "flaky"].pair_id) == {p.pair_id for p in pairs} - raising - nan
    assert set(values[values.method == "identity"].pair_id) == {p.pair_id for p in pairs}
    # a failed row counts as done: re-running does not retry it
    again = Runner(RunConfig("synth-smoke", methods=("flaky",), out=tmp_path, progress=False)).run()
    assert again.generated == 0 and again.skipped == 8


def test_rerun_skips_and_new_metrics_are_scored_from_stored_pngs(tmp_path):
    base = dict(methods=("reinhard",), out=tmp_path, progress=False)
    first = Runner(RunConfig("synth-smoke", metrics=("content_ssim",), **base)).run()
    assert first.generated == 8 and first.rescored == 0
    second = Runner(RunConfig("synth-smoke", metrics=("content_ssim", "target_psnr"), **base)).run()
    assert second.generated == 0 and second.skipped == 8 and second.rescored == 8
    with Store(tmp_path) as st:
        v = st.values()
    assert v.groupby("metric").size().to_dict() == {"content_ssim": 8, "target_psnr": 8}


def test_outputs_do_not_depend_on_batch_size(tmp_path):
    r1 = run(RunConfig("synth-smoke", methods=("histmatch",), out=tmp_path / "a", batch_size=1, progress=False))
    r8 = run(RunConfig("synth-smoke", methods=("histmatch",), out=tmp_path / "b", batch_size=8, progress=False))
    with Store(r1.run_dir) as a, Store(r8.run_dir) as b:
        va, vb = a.values().set_index(["pair_id", "metric"]).value, b.values().set_index(["pair_id", "metric"]).value
    assert len(va) == len(vb) > 0
    np.testing.assert_allclose(va.sort_index(), vb.sort_index(), rtol=1e-6)


def test_seeds_multiply_samples_and_latency_is_recorded(tmp_path):
    s = Runner(RunConfig("synth-smoke", methods=("identity",), seeds=(0, 1), limit=3, out=tmp_path, progress=False)).run()
    assert s.generated == 6
    with Store(tmp_path) as st:
        samples = st.samples()
    assert sorted(samples.seed.tolist()) == [0, 0, 0, 1, 1, 1]
    assert (samples.latency_s >= 0).all() and (samples.peak_memory_bytes > 0).all()
    assert set(samples.memory_kind) == {"cpu_rss"}
    for rel in samples.output_path:
        assert Image.open(tmp_path / rel).size == (64, 64)


def test_method_params_are_part_of_the_sample_identity(tmp_path):
    cfg = dict(methods=("reinhard",), out=tmp_path, metrics=("content_ssim",), limit=4, progress=False)
    Runner(RunConfig("synth-smoke", **cfg)).run()
    s = Runner(RunConfig("synth-smoke", method_args={"reinhard": {"strength": 0.0}}, **cfg)).run()
    assert s.generated == 4 and s.skipped == 0  # new parameters, new samples
    with Store(tmp_path) as st:
        v = st.values()
    assert v.method_config.nunique() == 2
    by_cfg = v.groupby("method_config").value.mean()
    assert by_cfg.max() > 0.99 > by_cfg.min()  # strength 0 returns the content


def test_retry_failed_replaces_error_rows(tmp_path, flaky):
    cfg = dict(methods=("flaky",), out=tmp_path, progress=False)
    first = Runner(RunConfig("synth-smoke", **cfg)).run()
    again = Runner(RunConfig("synth-smoke", retry_failed=True, **cfg)).run()
    assert again.failed == first.failed > 0 and again.generated == 0
    with Store(tmp_path) as st:
        samples, runs = st.samples(), st.runs()
    assert len(samples) == len(flaky.spec.pairs) and samples.sample_key.is_unique
    # the error rows are the second run's (replaced), the good ones still the first run's (not recomputed)
    first_id, second_id = runs.run_id
    assert (samples[samples.status == "error"].run_id == second_id).sum() == first.failed
    assert (samples[samples.status == "ok"].run_id == first_id).sum() == first.generated
