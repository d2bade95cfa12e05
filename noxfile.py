"""The version matrix: cloaca-celery against the oldest and newest releases it allows.

``make test-matrix`` runs every session below; ``.ci/run`` runs the ones tagged
``ci`` (the oldest and the newest combination). Each session makes a fresh
virtual environment with uv, installs the project with its ``redis`` and
``django`` extras and the test tools, prints what it installed, and runs the
unit tests, the store contract suite (SQLite, PostgreSQL, MariaDB, Django)
and the end-to-end smoke test (``tests/smoke``).

* ``oldest``: uv's ``--resolution lowest-direct`` takes the lowest release
  of each of cloaca's own dependencies that its ``pyproject.toml`` allows
  (raised only where another of them needs more, e.g. kombu for Celery 5.5.0),
  on the oldest Python.
* ``newest``: the newest releases allowed, on every supported Python;
  Django stays below 6 (the supported range is 4.2 to 5.2).
* ``django6``: the same with the newest Django 6 (Python 3.12 and newer
  only), which ``django_cloaca`` is not promised to support yet: this session
  says whether it works.

The interpreters come from pyenv (``$PYENV_ROOT/versions/3.X.*``) or the
PATH; a missing one is an error, not a skipped session.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.error_on_missing_interpreters = True
nox.options.reuse_venv = "no"

PYTHONS = ("3.10", "3.11", "3.12", "3.13")
# What the test suite imports besides the project and its redis and django extras (the same floors
# as the dev extra in pyproject.toml, which also holds the tools no session needs).
TEST_TOOLS = (
    "pytest>=8", "pytest-timeout>=2.3", "pytest-django>=4.8", "hypothesis>=6", "psycopg[binary]>=3.1",
    "pymysql>=1.1",
)
SUITES = ("tests/unit", "tests/contract", "tests/smoke")
DIRECT = ("celery", "kombu", "sqlalchemy", "alembic", "click", "django", "redis")


def pyenv_interpreters() -> list[Path]:
    """The bin folders of pyenv's newest patch release of each supported Python, if pyenv has them."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    found = []
    for version in PYTHONS:
        candidates = sorted(
            (p for p in root.glob(f"{version}.*") if (p / "bin" / f"python{version}").exists()),
            key=lambda p: tuple(int(part) for part in p.name.split(".") if part.isdigit()),
        )
        if candidates:
            found.append(candidates[-1] / "bin")
    return found


# nox finds ``python3.X`` on the PATH: put pyenv's real interpreters first (its shims only
# answer for the versions pyenv has activated).
os.environ["PATH"] = os.pathsep.join([*map(str, pyenv_interpreters()), os.environ.get("PATH", "")])
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")

COMBINATIONS = [
    nox.param("3.10", "oldest", id="3.10-oldest", tags=["ci"]),
    *(nox.param(python, "newest", id=f"{python}-newest", tags=["ci"] if python == PYTHONS[-1] else [])
      for python in PYTHONS),
    nox.param(PYTHONS[-1], "django6", id=f"{PYTHONS[-1]}-django6"),
]


@nox.session(name="matrix")
@nox.parametrize("python,deps", COMBINATIONS)
def matrix(session: nox.Session, deps: str) -> None:
    """Unit tests, store contract suite and smoke test on one Python and one end of the range."""
    if deps == "oldest":
        session.install("--resolution=lowest-direct", "-e", ".[redis,django]")
        session.install(*TEST_TOOLS)
    elif deps == "django6":
        session.install("-e", ".[redis,django]", "django>=6", *TEST_TOOLS)
    else:
        session.install("-e", ".[redis,django]", "django<6", *TEST_TOOLS)
    session.run("python", "-c", (
        "import importlib.metadata as m, platform; "
        f"print('matrix {session.name}: Python', platform.python_version(), "
        f"*(f'{{n}} {{m.version(n)}}' for n in {DIRECT!r}))"
    ))
    session.run("python", "-m", "pytest", *SUITES, "-q", *session.posargs)
