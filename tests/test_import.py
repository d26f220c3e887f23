"""External methods: `sxbench tasks` writes the work list and inputs, `sxbench import` scores the outputs.

On ``synth-smoke`` (8 pairs, 64 × 64); the autouse ``_no_user_weights`` leaves only the weight-free metrics.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from baselines.reinhard import Reinhard
from conftest import write_tiny_inception
from sxbench import registry
from sxbench.cli import main
from sxbench.imported import TASK_COLUMNS
from sxbench.records import IMPORTED_VERSION
from sxbench.store import Store

WEIGHT_FREE = {"content_ssim", "content_edge_f1", "style_color_swd", "style_gram", "target_psnr", "target_ssim",
               "target_detail", "target_color_swd"}


def sx(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def read_tasks(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def write_outputs(tasks_csv: Path, out: Path) -> list[dict[str, str]]:
    """Run ``reinhard`` on each task's input files, as an external program would; save under ``output_file``."""
    rows = read_tasks(tasks_csv)
    out.mkdir(parents=True, exist_ok=True)
    method = Reinhard()
    for r in rows:
        content = Image.open(tasks_csv.parent / r["content_path"]).convert("RGB")
        style = Image.open(tasks_csv.parent / r["style_path"]).convert("RGB")
        method.stylize_batch([content], [style], seeds=[int(r["seed"])])[0].save(out / r["output_file"])
    return rows


@pytest.fixture(scope="module")
def tasks_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tasks") / "tasks.csv"
    assert main(["tasks", "--protocol", "synth-smoke", "--out", str(path)]) == 0
    return path


def test_tasks_list_the_protocol_with_its_exact_inputs(tasks_csv):
    rows = read_tasks(tasks_csv)
    protocol = registry.create_protocol("synth-smoke")
    assert tuple(rows[0]) == TASK_COLUMNS
    assert [(r["pair_id"], int(r["seed"])) for r in rows] == [(p.pair_id, 0) for p in protocol.spec.pairs]
    assert len({r["output_file"] for r in rows}) == len(rows) == 8
    for r in rows:
        assert r["output_file"] == f"{r['task_id']}.png" and r["resolution"] == "64"
        for kind in ("content", "style"):
            got = np.asarray(Image.open(tasks_csv.parent / r[f"{kind}_path"]))
            want = np.asarray(getattr(protocol, kind)(r[f"{kind}_id"]))
            assert np.array_equal(got, want), (kind, r[f"{kind}_id"])  # pixel for pixel what methods receive


def test_import_round_trip_equals_native_run(tmp_path, capsys):
    native, imp, tasks_csv = tmp_path / "native", tmp_path / "imported", tmp_path / "t" / "tasks.csv"
    # only the Inception (fid, kid), small: the full tiny_weights set takes 16 s to build
    weights = str(write_tiny_inception(tmp_path / "weights", channels=16, stride=8))
    # synth-lite at 32²: 56 pairs of 56 distinct styles (32 seen, 24 unseen), enough outputs and references for
    # set metrics in every subset
    common = ["--protocol", "synth-lite", "--resolution", "32", "--seeds", "0", "--no-progress", "--weights-dir",
              weights, "--metrics", ",".join(sorted(WEIGHT_FREE | {"fid", "kid"}))]
    rc, _, _ = sx(capsys, "run", "--methods", "reinhard", "--out", str(native), *common)
    assert rc == 0
    assert main(["tasks", "--protocol", "synth-lite", "--resolution", "32", "--seeds", "0", "--out", str(tasks_csv)]) == 0
    write_outputs(tasks_csv, tmp_path / "outs")
    rc, out, err = sx(capsys, "import", str(tmp_path / "outs"), "--as", "reinhard-ext", "--out", str(imp),
                      "--reference", "Reinhard et al. 2001, run externally", *common)
    assert rc == 0 and "56 imported as reinhard-ext, 0 already stored, 0 problem(s)" in out, out + err
    assert "import problem" not in err

    with Store(native) as s:
        a, sa = s.values(), s.set_values()
    with Store(imp) as s:
        b, sb = s.values(), s.set_values()
        infos = s.methods()
        samples = s.samples()
    assert set(a.metric) == set(b.metric) == WEIGHT_FREE
    a, b = (d.set_index(["pair_id", "seed", "metric"]).value.sort_index() for d in (a, b))
    assert a.index.equals(b.index) and len(a) == 56 * len(WEIGHT_FREE)
    assert np.max(np.abs(a.to_numpy() - b.to_numpy())) <= 1e-6
    sa, sb = (d.set_index(["metric", "subset"]).sort_index() for d in (sa, sb))
    assert set(sa.index.get_level_values("metric")) == {"fid", "kid"} and sa.index.equals(sb.index)
    assert (sa.n == 56).any() and sa.n.equals(sb.n) and sa.value.notna().all()
    for col in ("value", "ci_low", "ci_high", "std"):  # the same draws for both: the same intervals
        assert np.allclose(sa[col].to_numpy(float), sb[col].to_numpy(float), atol=1e-6, equal_nan=True), col
    # stored like a native method's output: one info, images/<name>/<key>.png, version "imported"
    (info,) = infos.values()
    assert info["name"] == "reinhard-ext" and info["version"] == IMPORTED_VERSION and set(info["params"]) == {"digest"}
    assert info["provenance"]["source"] == str((tmp_path / "outs").resolve())
    assert all((imp / p).is_file() and p.startswith("images/reinhard-ext/") for p in samples.output_path)

    # importing the same images again recomputes nothing; a run cannot regenerate them
    rc, out, _ = sx(capsys, "import", str(tmp_path / "outs"), "--as", "reinhard-ext", "--out", str(imp), *common)
    assert "0 imported as reinhard-ext, 56 already stored" in out
    rc, _, err = sx(capsys, "run", "--methods", "reinhard-ext", "--protocol", "synth-lite", "--resolution", "32", "--out",
                    str(imp))
    assert rc == 2 and "was imported" in err and "cannot be run" in err
    # a registered method's name is refused
    rc, _, err = sx(capsys, "import", str(tmp_path / "outs"), "--as", "reinhard", "--protocol", "synth-lite",
                    "--out", str(imp))
    assert rc == 2 and "registered method" in err


def test_import_reports_each_bad_file_and_scores_the_rest(tmp_path, tasks_csv, capsys):
    outs = tmp_path / "outs"
    rows = write_outputs(tasks_csv, outs)
    missing, corrupt, small, grey = (outs / r["output_file"] for r in rows[:4])
    missing.unlink()
    corrupt.write_bytes(corrupt.read_bytes()[:40])
    Image.open(small).resize((32, 32)).save(small)
    Image.open(grey).convert("L").save(grey)
    Image.new("RGB", (64, 64)).save(outs / "not_a_task.png")
    run = tmp_path / "run"
    rc, out, err = sx(capsys, "import", str(outs), "--as", "ext", "--protocol", "synth-smoke", "--out", str(run),
                      "--reference", "Doe et al., Some Method, 2031", "--notes", "commit abc123", "--no-progress")
    assert rc == 0 and "4 imported as ext, 0 already stored, 5 problem(s)" in out, out + err
    lines = [ln for ln in err.splitlines() if ln.startswith("import problem:")]
    assert len(lines) == 5
    # each file's line names it, says what is wrong and what to do
    for f, problem, fix in (
            (missing, "missing", "write this task's output there and import again"),
            (corrupt, "cannot be read as an image", "write it again as an RGB PNG and import again"),
            (small, "32×32 pixels, expected 64×64", "produce it at 64×64 from the task's inputs and import again"),
            (grey, "mode L, expected 8-bit RGB", "convert it (e.g. PIL `Image.open(f).convert('RGB').save(f)`) and "
                                                 "import again"),
            (outs / "not_a_task.png", "not in the task list", "rename it to its task's output_file or remove it")):
        (line,) = [ln for ln in lines if str(f) in ln]
        assert problem in line, line
        assert fix in line, line
    with Store(run) as s:
        samples, values = s.samples(), s.values()
    assert (samples.status == "ok").sum() == 4 and (samples.status == "error").sum() == 4
    assert values.sample_key.nunique() == 4 and set(values.metric) == WEIGHT_FREE
    html = (run / "index.html").read_text()
    assert 'ext <span class="imported"' in html and "Doe et al., Some Method, 2031" in html and "commit abc123" in html
    assert "missing" in html  # failed tasks listed under Failures

    # fixed files: the earlier import of `ext` is replaced, not added to
    write_outputs(tasks_csv, outs)
    (outs / "not_a_task.png").unlink()
    rc, out, err = sx(capsys, "import", str(outs), "--as", "ext", "--protocol", "synth-smoke", "--out", str(run),
                      "--no-progress")
    assert "8 imported as ext, 0 already stored, 0 problem(s), 8 samples of an earlier import replaced" in out, out
    with Store(run) as s:
        samples = s.samples()
        assert len(s.methods()) == 1
    assert len(samples) == 8 and (samples.status == "ok").all()
    assert len(list((run / "images" / "ext").glob("*.png"))) == 8
