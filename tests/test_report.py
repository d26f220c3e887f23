"""The report's naming of stored method configurations (a store keeps every configuration it has run)."""

from __future__ import annotations

import re
import subprocess
import sys

import pandas as pd
import pytest

from sxbench.report import config_labels


def _info(name: str, **params) -> dict:
    return {"name": name, "version": "1", "params": params}


def test_config_labels_name_what_tells_configurations_apart():
    infos = {("reinhard", "aaaa1111"): _info("reinhard", strength=1.0),
             ("reinhard", "bbbb2222"): _info("reinhard", strength=0.5),
             ("identity", "cccc3333"): _info("identity"),
             ("adain", "dddd4444"): _info("adain", alpha=1.0, weights_sha256="69157d3e3b6e30ab91656471"),
             ("adain", "eeee5555"): _info("adain", alpha=1.0, colour="style", weights_sha256="69157d3e3b6e30ab91656471"),
             ("x", "ffff6666"): _info("x", p=1, reproduce="a"), ("x", "gggg7777"): _info("x", p=1, reproduce="b"),
             ("y", "hhhh8888"): _info("y", w="0123456789abcdef-long-1"),
             ("y", "iiii9999"): _info("y", w="0123456789abcdef-long-2")}
    labels = config_labels(infos)
    assert labels[("reinhard", "aaaa1111")] == "reinhard (strength=1.0)"
    assert labels[("reinhard", "bbbb2222")] == "reinhard (strength=0.5)"
    assert labels[("identity", "cccc3333")] == "identity"  # one configuration: the plain name
    assert labels[("adain", "dddd4444")] == "adain (colour=None)"  # a parameter one configuration lacks
    assert labels[("adain", "eeee5555")] == "adain (colour=style)"
    assert labels[("x", "ffff6666")] == "x (ffff6666)"  # no parameter differs: the configuration hash
    assert labels[("y", "hhhh8888")] == "y (hhhh8888)"  # shortened values would collide: the hashes
    # only the configurations present are named: one left, the plain name
    assert config_labels(infos, [("reinhard", "bbbb2222")]) == {("reinhard", "bbbb2222"): "reinhard"}


def test_report_shows_two_configurations_of_a_method_side_by_side(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sxbench.cli", "run", "--protocol", "synth-smoke", "--methods", "reinhard",
           "--metrics", "content_ssim", "--out", str(out), "--no-progress"]
    for extra in ([], ["--param", "reinhard.strength=0.5"]):
        p = subprocess.run(cmd + extra, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "8 generated" in p.stdout
    subprocess.run([sys.executable, "-m", "sxbench.cli", "export", str(out)], check=True, capture_output=True)
    df = pd.read_csv(out / "results.csv")
    df = df[(df.metric == "content_ssim") & (df.scope == "sample")]
    means = df.groupby("method_config").value.mean()
    assert len(means) == 2 and means.nunique() == 2
    html = (out / "index.html").read_text()
    rows = {}
    for name in ("reinhard (strength=1.0)", "reinhard (strength=0.5)"):
        m = re.search(re.escape(f"<tr><td>{name}</td>") + r'\s*<td[^>]*data-v="([^"]+)"', html)
        assert m, name  # a leaderboard row of its own
        rows[name] = float(m.group(1))
    # each row is its own configuration's mean, not the two pooled
    assert sorted(rows.values()) == pytest.approx(sorted(means), abs=1e-9)
    assert "<tr><td>reinhard</td>" not in html
