"""README command 1's run, whole (marker ``slow``, off by default: ``nox -s slow`` or ``pytest -m slow``).

With nothing fetched (DESIGN.md, decision 2): the default methods and protocol run on the weight-free metrics,
every metric and method that needs weights is named with the command that fetches it, and the store holds
every sample once. About 3 minutes on 2 CPU cores.
"""

import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

SX = [sys.executable, "-m", "sxbench"]


def test_readme_default_run_without_weights(tmp_path):
    from sxbench import registry
    from sxbench.runner import DEFAULT_METHODS

    out, args = tmp_path / "run", ["--weights-dir", str(tmp_path / "empty"), "--no-progress"]
    p = subprocess.run([*SX, "run", "--protocol", "synth-lite", "--out", str(out), *args], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    spec = registry.create_protocol("synth-lite").spec
    needs_weights = {m for m in spec.metrics if registry.metrics.get(m).info.backbone}
    weight_free = set(spec.metrics) - needs_weights
    assert needs_weights and weight_free
    skipped = {ln.split(":")[0].removeprefix("skipped metric ") for ln in p.stdout.splitlines()
               if ln.startswith("skipped metric ")}
    assert skipped == needs_weights
    assert all("sxbench weights fetch" in ln for ln in p.stdout.splitlines() if ln.startswith("skipped metric "))
    failed = [ln for ln in p.stderr.splitlines() if ln.startswith("skipped method ")]
    assert {ln.split(":")[0].removeprefix("skipped method ") for ln in failed} == {"magenta", "adain"}
    assert all("sxbench weights fetch" in ln for ln in failed)
    ran = [m for m in DEFAULT_METHODS if m not in ("magenta", "adain")]
    n = len(ran) * len(spec.pairs)
    assert f"{n} generated, 0 already stored, 0 failed" in p.stdout

    subprocess.run([*SX, "export", str(out)], check=True, capture_output=True)
    df = pd.read_csv(out / "results.csv")
    per_image = df[df.scope == "sample"]
    assert set(per_image.metric) == weight_free
    counts = per_image.groupby(["method", "metric"]).value.count()
    assert set(counts.index.get_level_values("method")) == set(ran)
    assert (counts == len(spec.pairs)).all(), "every pair scored once by every metric"
    assert (out / "index.html").stat().st_size > 0

    again = subprocess.run([*SX, "run", "--protocol", "synth-lite", "--out", str(out), *args], capture_output=True,
                           text=True)
    assert again.returncode == 0 and f"0 generated, {n} already stored, 0 failed" in again.stdout
