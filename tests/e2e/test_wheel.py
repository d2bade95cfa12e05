"""The release a user gets: the built wheel, installed into a fresh virtual environment, works.

``python -m build`` makes the sdist and, from it, the wheel; ``twine check
--strict`` passes on both; the wheel (not an editable install, not this
checkout) goes into a new venv with its ``redis`` extra, and that venv's
``celery`` runs the README quickstart as a reader would
(``run_the_readme_quickstart``) and ``celery -A proj cloaca check``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import cloaca_celery
from tests.docs.pages import REPO, write_project
from tests.e2e.test_docs_projects import Reader, run_the_readme_quickstart

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]


def _run(*args: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    shown = " ".join(map(str, args))
    assert done.returncode == 0, f"{shown} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


def _fresh_venv(folder: Path, wheel: Path) -> Path:
    """A new venv with the wheel and its ``redis`` extra installed; its Python."""
    python = folder / "bin" / "python"
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is not None:
        _run(uv, "venv", "--quiet", "--python", sys.executable, folder)
        _run(uv, "pip", "install", "--quiet", "--python", python, f"{wheel}[redis]")
    else:
        _run(sys.executable, "-m", "venv", folder)
        _run(python, "-m", "pip", "install", "--quiet", f"{wheel}[redis]")
    return python


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(sdist, wheel) built from this checkout with ``python -m build``."""
    dist = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--outdir", dist, REPO)
    (sdist,) = dist.glob("cloaca_celery-*.tar.gz")
    (wheel,) = dist.glob("cloaca_celery-*-py3-none-any.whl")
    yield sdist, wheel


def test_the_distributions_are_named_by_the_one_version_and_pass_twine_check(
    built: tuple[Path, Path],
) -> None:
    sdist, wheel = built
    version = cloaca_celery.__version__
    assert sdist.name == f"cloaca_celery-{version}.tar.gz"
    assert wheel.name.startswith(f"cloaca_celery-{version}-")
    checked = _run(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel)
    assert checked.count("PASSED") == 2, checked


def test_the_installed_wheel_runs_the_readme_quickstart_and_cloaca_check(
    built: tuple[Path, Path], tmp_path: Path, redis_url: str
) -> None:
    _, wheel = built
    python = _fresh_venv(tmp_path / "venv", wheel)
    project = tmp_path / "project"
    project.mkdir()
    where = _run(python, "-c", "import cloaca_celery, django_cloaca; print(cloaca_celery.__file__); "
                 "print(cloaca_celery.__version__)", cwd=project).split()
    assert where[0].startswith(str(tmp_path / "venv")), f"not the wheel's copy: {where[0]}"
    assert where[1] == cloaca_celery.__version__

    isolated = {"CELERY_BROKER_URL": redis_url, "CELERY_RESULT_BACKEND": redis_url}
    reader = Reader(project, "README.md", isolated, python=str(python))
    try:
        write_project(reader.page, project)
        check = reader.run("celery -A proj cloaca check")
        assert check.returncode == 0, check.stdout + check.stderr
        run_the_readme_quickstart(reader)
    finally:
        reader.stop_all()
