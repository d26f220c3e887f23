"""Developer sessions. They run in the current environment (``python=False``): the torch install is
5.5 GB, and a per-session virtualenv would copy it each time. Install first with
``pip install -e '.[test]'``."""

import nox

nox.options.sessions = ["tests"]


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """The default test suite (slow and GPU tests off)."""
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=False)
def slow(session: nox.Session) -> None:
    """Everything except GPU tests."""
    session.run("python", "-m", "pytest", "-m", "not gpu", *session.posargs)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """ruff, if installed."""
    session.run("ruff", "check", "sxbench", "baselines", "styleexpert", "tests", external=True)


@nox.session(python=False)
def e2e(session: nox.Session) -> None:
    """The README's main job on the default protocol."""
    session.run("sxbench", "run", *session.posargs)


@nox.session(python=False)
def report(session: nox.Session) -> None:
    """Re-render a run folder's report: ``nox -s report -- reports/synth``."""
    session.run("sxbench", "report", *(session.posargs or ["reports/synth"]))
