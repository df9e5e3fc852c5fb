"""Test, lint and benchmark sessions. A bare `nox` runs tests, lint, typecheck and contract."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "contract"]
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite under coverage (fails under 90 % of `src/`, branches counted)."""
    session.install("-e", ".[test]")
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    if not session.posargs:  # the REST and WebSocket suites again, on SQLite and on Redis
        for storage in ("sqlite", "redis"):
            session.run(
                "coverage",
                "run",
                "-m",
                "pytest",
                "-q",
                "tests/integration/test_rest.py",
                "tests/integration/test_ws.py",
                env={"IPT_BUS_TEST_STORAGE": storage},
            )
        session.run("coverage", "combine", "-q")
        session.run("coverage", "report")


@nox.session
def repeat(session: nox.Session) -> None:
    """The resume-under-live-traffic test 50 times in a row: it must never flake (issue 18)."""
    session.install("-e", ".[test]")
    session.run(
        "pytest",
        "-q",
        "tests/integration/test_durable.py::test_resume_during_live_traffic_is_gapless_and_duplicate_free",
        env={"IPT_BUS_REPEAT": session.posargs[0] if session.posargs else "50"},
    )


@nox.session
def contract(session: nox.Session) -> None:
    """schemathesis against live buses (open and with tokens): no server error, nothing that
    contradicts /openapi.json (tools/contract.py; about 1.5 minutes)."""
    session.install("-e", ".", "schemathesis>=4.0")
    session.run("python", "tools/contract.py", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("-e", ".", "ruff>=0.8", "import-linter>=2.1")
    session.run("ruff", "check", "src", "tests", "tools", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "tools", "noxfile.py")
    session.run("lint-imports")  # the layers of STYLE.md §1 (contracts in pyproject.toml)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict (pyproject.toml) on the package, and on tests, tools and this file."""
    session.install("-e", ".[test]", "mypy>=1.13", "nox>=2024.10")
    session.run("mypy", "src")
    session.run("mypy", "tests", "tools", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks of docs/performance.md; not part of the default run."""
    session.install("-e", ".[test]")
    session.run("python", "tools/bench.py", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """Connect storm, ping flood and a 10-minute soak (docs/operations.md); not in the default."""
    session.install("-e", ".[test]")
    session.run("python", "tools/soak.py", *session.posargs)
