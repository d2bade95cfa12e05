"""docs/testing.md's pytest suite, built from the page's files and run with the page's command.

The page's ``test_stock.py`` proves the isolation itself: two of its tests
declare a trigger of the same name (a second definition is refused without
``cloaca_registries``), and the last finds none left. It runs with the
plugin found through its entry point, and again with autoloading off, when
only the page's ``pytest_plugins`` line loads it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.pages import REPO, commands, write_project

PAGE = REPO / "docs" / "testing.md"


@pytest.mark.slow  # runs pytest in a subprocess
@pytest.mark.parametrize("autoload", [True, False], ids=["entry-point", "pytest_plugins"])
def test_the_page_suite_passes_with_the_plugin(tmp_path: Path, autoload: bool) -> None:
    written = [p.name for p in write_project(PAGE, tmp_path)]
    assert written == ["test_stock.py", "conftest.py"]
    command = next(c for c in commands(PAGE) if c.startswith("pytest "))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_", "CELERY_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if not autoload:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout, done.stdout
