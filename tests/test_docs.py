"""Every Python example in README.md and docs/ runs, with the checks written beside it.

A page's ```python blocks run in order in one namespace, in a temporary
directory. ``<!-- test-setup ... -->`` comments (stand-ins for the reader's
own functions) run where they stand, and ``<!-- test-check ... -->`` comments
hold assertions about what the examples just did. After a page has run, every
trigger it defined is polled once, in process, and must return a valid result.
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from cloaca_celery.polling import evaluate
from cloaca_celery.triggers import triggers

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_PIECE = re.compile(
    r"```python\n(?P<code>.*?)```|<!--\s*test-(?P<kind>setup|check)\n(?P<hidden>.*?)-->", re.S
)


def pieces(page: Path) -> list[tuple[str, str, int]]:
    text = page.read_text()
    found = []
    for match in _PIECE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        if match.group("code") is not None:
            found.append(("example", match.group("code"), line))
        else:
            found.append((match.group("kind"), textwrap.dedent(match.group("hidden")), line))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = pieces(page)
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
        for kind, code, line in found:
            try:
                exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(
                    f"{page.relative_to(REPO)} line {line} ({kind}) failed: {exc!r}"
                ) from exc
    finally:
        _state._set_current_app(current)  # an example's Celery() must not stay the current app
    for name in sorted(set(triggers.names()) - before):
        definition = triggers.get(name)
        result = evaluate(definition, {})
        assert result.is_fire_result() or result.is_skip_result()
    assert os.getcwd() == str(tmp_path)


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


def test_mkdocs_builds_strictly(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "triggers" / "index.html").exists()
