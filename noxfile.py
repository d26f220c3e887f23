"""Developer sessions. They run in the current environment (``python=False``): the torch install is
5.5 GB, and a per-session virtualenv would copy it each time. Install first with
``pip install -e '.[test]'`` and call the environment's nox (``.venv/bin/nox``): commands run with the
interpreter that runs nox."""

import sys

import nox

nox.options.sessions = ["tests"]


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """The default test suite (slow and GPU tests off)."""
    session.run(sys.executable, "-m", "pytest", *session.posargs)


@nox.session(python=False)
def slow(session: nox.Session) -> None:
    """Everything except GPU tests: the default suite plus the ``slow`` ones (README command 1's whole run)."""
    session.run(sys.executable, "-m", "pytest", "-m", "not gpu", *session.posargs)


@nox.session(python=False)
def gpu(session: nox.Session) -> None:
    """The CUDA tests (marker ``gpu``): each compares the GPU result with the CPU's; they skip without CUDA."""
    session.run(sys.executable, "-m", "pytest", "-m", "gpu", *session.posargs)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """ruff, if installed."""
    session.run("ruff", "check", "sxbench", "baselines", "styleexpert", "tests", external=True)


@nox.session(python=False)
def e2e(session: nox.Session) -> None:
    """The README's main job on the default protocol."""
    session.run(sys.executable, "-m", "sxbench", "run", *session.posargs)


@nox.session(python=False)
def report(session: nox.Session) -> None:
    """Re-render a run folder's report: ``nox -s report -- reports/synth``."""
    session.run(sys.executable, "-m", "sxbench", "report", *(session.posargs or ["reports/synth"]))


BENCH_DIR = "reports/bench"


def _bench(session: nox.Session, name: str, args: list[str]) -> None:
    import os

    os.makedirs(BENCH_DIR, exist_ok=True)
    out = f"{BENCH_DIR}/{name}.json"
    session.run(sys.executable, "-m", "pytest", "benchmarks", "-o", "python_files=bench_*.py", "-p", "no:cacheprovider",
                "--benchmark-only",
                f"--benchmark-json={out}", "--benchmark-columns=median,min,max", "--benchmark-sort=name", *args)
    session.run(sys.executable, "benchmarks/table.py", out, "-o", f"{BENCH_DIR}/{name}.md")


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """The CPU benchmark suite: JSON and a Markdown table in reports/bench/cpu.*."""
    _bench(session, "cpu", ["-m", "not gpu", *session.posargs])


@nox.session(python=False)
def gpu_bench(session: nox.Session) -> None:
    """The GPU benchmarks (full Kontext shapes) into reports/bench/gpu.*; without CUDA it says so, runs the
    CPU-sized cases and succeeds, unless ``-- --require-gpu`` (for a GPU CI job) makes that an error."""
    import subprocess

    cuda = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                          capture_output=True, text=True).stdout.strip() == "True"
    if not cuda:
        if "--require-gpu" in session.posargs:
            session.error("--require-gpu: no CUDA device is visible to torch")
        session.log("no CUDA device: running the CPU-sized cases only (the GPU cases are skipped)")
    _bench(session, "gpu" if cuda else "gpu-fallback-cpu", ["-m", "not slow", *session.posargs])
