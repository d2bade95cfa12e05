"""Every Python example in README.md and docs/ runs as the reader sees it.

A page's example blocks run in order in one namespace, in a temporary
directory, and ``<!-- test-check ... -->`` comments hold assertions about
what the examples just did. Project files (blocks headed ``# path.py``) are
built and run with real processes by ``tests/e2e/test_docs_projects.py``
(``docs/testing.md``'s pytest suite: by ``tests/docs/test_testing_page.py``).
After a page has run, every trigger it defined is polled once, in process,
and must return a valid result. See ``tests/docs/pages.py``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from cloaca_celery.triggers import triggers
from tests.docs.pages import PAGES, REPO, pieces


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = [p for p in pieces(page) if p.kind in ("example", "check")]
    fences = re.findall(r"^```(\S*)$", page.read_text(), re.M)
    openings = fences[::2]
    assert all(openings), f"{page.name}: every code block names its language (python, bash, text)"
    monkeypatch.chdir(tmp_path)
    from celery import _state

    monkeypatch.setattr(_state, "default_app", _state.default_app)
    current = _state.get_current_app()
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", os.environ.get("DJANGO_SETTINGS_MODULE", ""))
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    before = set(triggers.names())
    try:
        for piece in found:
            try:
                exec(compile(piece.code, f"{page.name}:{piece.line}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(
                    f"{page.relative_to(REPO)} line {piece.line} ({piece.kind}) failed: {exc!r}"
                ) from exc
    finally:
        _state._set_current_app(current)  # an example's Celery() must not stay the current app
    for name in sorted(set(triggers.names()) - before):
        definition = triggers.get(name)
        result = definition.evaluate({})
        assert result.is_fire_result() or result.is_skip_result()
    assert os.getcwd() == str(tmp_path)


def test_project_files_are_built_by_a_test() -> None:
    """A page with project files is one that a test builds and runs: tests/e2e/test_docs_projects.py
    (with worker and beat processes), or tests/docs/test_testing_page.py (its pytest suite)."""
    from tests.e2e.test_docs_projects import BUILT_PAGES

    with_files = {p.relative_to(REPO).as_posix() for p in PAGES if any(x.kind == "file" for x in pieces(p))}
    assert with_files == {*BUILT_PAGES, "docs/testing.md"}


def test_trigger_page_keeps_the_seed_examples() -> None:
    """The trigger page holds cloaca's examples unchanged but for the import line."""
    page = (REPO / "docs" / "triggers.md").read_text()
    for snippet in (
        "def my_trigger():", "def file_watcher():", "def order_trigger():", "def queue_trigger():",
        "def health_check():", "def queue_depth_trigger():", "def good_trigger():",
        "def bad_trigger():", "def resilient_trigger():",
    ):
        assert snippet in page
    assert "import cloaca_celery as cloaca" in page


def test_configuration_page_lists_every_setting() -> None:
    from cloaca_celery.settings import DEFAULTS

    page = (REPO / "docs" / "configuration.md").read_text()
    missing = [name for name in DEFAULTS if f"`cloaca_{name}`" not in page]
    assert not missing, f"docs/configuration.md does not document {missing}"


@pytest.mark.slow  # runs mkdocs
def test_mkdocs_builds_strictly(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "triggers" / "index.html").exists()
