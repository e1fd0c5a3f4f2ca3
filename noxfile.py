"""Developer sessions: ``nox -s generate|tests|lint|bench|load|demo``.

* ``generate``          write the sync twin (``_sync/``) from the async source (``_async/``)
* ``generate -- --check``  write nothing; fail naming every stale, missing or orphan file
* ``tests``             the whole test suite (real PostgreSQL, Redis, workers, stand-in)
* ``lint``              ruff + mypy on the source and the generated code
* ``bench`` / ``load``  benchmarks and the Locust load scenario (report, never assert)
* ``demo``              the whole system on embedded defaults (the README's first command)
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["generate", "lint", "tests"]

DEV = ".[dev]"


GENERATOR = ("unasync==0.6.0", "tokenize-rt>=6", "setuptools>=69")


@nox.session
def generate(session: nox.Session) -> None:
    """Generate ``_sync`` from ``_async`` (``-- --check``: verify only, write nothing)."""
    session.install(*GENERATOR)
    session.run("python", "tools/generate.py", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (pass pytest arguments after ``--``)."""
    session.install("-e", DEV)
    session.run("python", "tools/generate.py", "--check")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy over source, generated code, tasks, tools and tests."""
    session.install("-e", DEV)
    session.run("ruff", "check", "src", "tasks", "tools", "tests", "noxfile.py")
    session.run("mypy", "src/waste_pipeline", "tasks")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: CPU overhead, worker throughput, memory (writes bench/results/)."""
    session.install("-e", DEV)
    session.run("python", "-m", "bench", *session.posargs)


@nox.session
def load(session: nox.Session) -> None:
    """Locust: 100 users against the API in queued mode, twin vs naive worker."""
    session.install("-e", DEV)
    session.run("python", "-m", "bench.load", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Bring up the embedded stack, scan through every door, replay the gevent failure."""
    session.install("-e", ".")
    session.run("waste-pipeline", "demo", *session.posargs)
