"""The README's two commands and CI agree."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", setup, re.S)]


def test_readme_has_exactly_two_setup_commands():
    cmds = readme_commands()
    assert len(cmds) == 2 and all("\n" not in c for c in cmds)
    assert "sxbench weights fetch default && " in cmds[0] and "sxbench run" in cmds[0] and "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()


def test_torch_pins():
    py = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.14.1"' in py and '"torchvision==0.29.1"' in py


def test_github_cpu_workflow_runs_the_readme_test_command_and_gpu_job_requires_a_gpu():
    ci = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert f"run: {readme_commands()[1]}" in ci
    gpu = (ROOT / ".github" / "workflows" / "gpu-bench.yml").read_text()
    assert "nox -s gpu_bench -- --require-gpu" in gpu and "self-hosted" in gpu and "upload-artifact" in gpu


def test_benchmark_table_ratios():
    from sxbench.report import bench as table

    def bench(name, group, variant, median):
        return {"name": name, "group": group, "stats": {"median": median}, "extra_info": {"variant": variant}}

    data = {"benchmarks": [bench("a", "layer", "grouped", 0.002), bench("b", "layer", "loop", 0.010),
                           bench("c", "step", "bare", 0.100), bench("d", "step", "moe", 0.101)]}
    r = table.ratios(table.rows(data))
    assert r["b"] == 5.0 and r["a"] == 1.0 and abs(r["d"] - 1.01) < 1e-9
    md = table.markdown(data)
    assert md.count("\n|") == 6 and "| 5.000 |" in md  # header, rule, four rows


def test_report_adds_a_latency_section_from_benchmark_json(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "r"
    sx = [sys.executable, "-m", "sxbench"]
    subprocess.run([*sx, "run", "--protocol", "synth-smoke", "--methods", "identity", "--out", str(out), "--no-progress"],
                   check=True, capture_output=True)

    def bench(name, group, variant, median, res):
        return {"name": name, "group": group, "stats": {"median": median},
                "extra_info": {"variant": variant, "peak_memory_mb": 10.0, "memory_kind": "cpu_rss", "device": "cpu",
                               "resolution": res}}

    data = {"benchmarks": [bench(f"step-{r}-{v}", f"step tiny {r}", v, m * r / 64, r)
                           for r in (64, 128) for v, m in (("bare", 0.04), ("moe", 0.05))]}
    (tmp_path / "b.json").write_text(json.dumps(data))
    p = subprocess.run([*sx, "report", str(out), "--bench", str(tmp_path / "b.json")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    html = (out / "index.html").read_text()
    assert "Latency and memory" in html and "step-128-moe" in html and "1.250" in html
    assert (out / "figures" / "latency.png").is_file()
