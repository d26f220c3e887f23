"""``sxbench compare``: paired differences from one method on a real (small) synth run."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from sxbench.cli import main

COLUMNS = ["method", "against", "metric", "level", "split", "n", "diff", "ci_low", "ci_high", "p_holm"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A synth run of the four weight-free baselines scored by content_ssim, on 64 of its 224 pairs (``--limit
    64``): all 224 took about 70 s wall on the 2-core machine, over the 40 s this test may take."""
    out = tmp_path_factory.mktemp("compare") / "run"
    assert main(["run", "--protocol", "synth", "--methods", "identity,reinhard,histmatch,stylecopy",
                 "--metrics", "content_ssim", "--out", str(out), "--no-progress", "--limit", "64"]) == 0
    return out


def compare(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["compare", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_identity_beats_reinhard_on_content_ssim(run_dir, capsys, tmp_path):
    """Acceptance (issue 17): identity's difference from reinhard on content_ssim is > 0 with a CI excluding 0,
    and the CSV and JSON outputs carry the columns method, against, metric, level, split, n, diff, ci_low, ci_high,
    p_holm."""
    code, stdout, _ = compare(capsys, str(run_dir), "--against", "reinhard", "--metric", "content_ssim",
                              "--format", "csv")
    assert code == 0
    csv_path = tmp_path / "diff.csv"
    csv_path.write_text(stdout)
    df = pd.read_csv(csv_path)
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert set(df.method) == {"identity", "histmatch", "stylecopy"}
    assert (df.against == "reinhard").all() and (df.metric == "content_ssim").all()
    assert (df.level == "all").all() and (df.split == "all").all() and (df.n == 64).all()
    identity = df.set_index("method").loc["identity"]
    assert identity["diff"] > 0 and identity.ci_low > 0 and identity.ci_low < identity["diff"] < identity.ci_high
    assert identity.p_holm < 0.05

    json_path = tmp_path / "diff.json"
    code, stdout, _ = compare(capsys, str(run_dir), "--against", "reinhard", "--metric", "content_ssim",
                              "--format", "json", "--output", str(json_path))
    assert code == 0 and stdout.strip() == f"wrote {json_path}"
    records = json.loads(json_path.read_text())
    assert [list(r)[: len(COLUMNS)] for r in records] == [COLUMNS] * 3
    assert pd.DataFrame(records).set_index("method")["diff"].to_dict() == pytest.approx(
        df.set_index("method")["diff"].to_dict(), rel=1e-12)


def test_table_is_readable(run_dir, capsys):
    code, stdout, _ = compare(capsys, str(run_dir), "--against", "reinhard")
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0].startswith("difference from reinhard (all pairs): diff = method − reinhard")
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert lines[header].split() == ["method", "metric", "n", "diff", "[95%", "CI]", "p_holm"]
    identity = next(line for line in lines if line.startswith("identity"))
    assert "content_ssim ↑" in identity and " 64 " in identity and " * " in identity
    assert len(lines) == header + 4  # histmatch, identity, stylecopy


def test_filters(run_dir, capsys):
    code, stdout, _ = compare(capsys, str(run_dir), "--against", "identity", "--format", "json",
                              "--split", "seen")
    records = json.loads(stdout)
    assert code == 0 and {r["split"] for r in records} == {"seen"} and {r["level"] for r in records} == {"all"}
    assert all(r["diff"] < 0 and r["ci_high"] < 0 for r in records)  # nothing keeps the content better than a copy


def test_one_line_errors(run_dir, capsys, tmp_path):
    code, stdout, stderr = compare(capsys, str(run_dir), "--against", "reinhardt")
    assert code == 2 and not stdout
    assert stderr.strip() == ("sxbench: error: unknown method 'reinhardt' (did you mean 'reinhard'?); known methods: "
                              "histmatch, identity, reinhard, stylecopy")
    code, _, stderr = compare(capsys, str(run_dir), "--against", "reinhard", "--metric", "fid")
    assert code == 2 and stderr.strip() == "sxbench: error: unknown metric 'fid'; known metrics: content_ssim"
    code, _, stderr = compare(capsys, str(tmp_path), "--against", "reinhard")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "no results.sqlite" in stderr
