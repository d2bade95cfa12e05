"""`make demo` works from nothing: the quickstart project fires its workflow on the embedded default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import REPO


@pytest.mark.e2e
def test_demo_runs_the_workflow_and_ends_by_itself(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))}
    env["CLOACA_DEMO_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, str(REPO / "example_project" / "quickstart" / "run_demo.py")],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "workflow 'file_processor' archived it" in done.stdout
    assert '"last_fire_at": "20' in done.stdout
    assert (tmp_path / "outbox" / "report.txt").read_text() == "alpha\nbeta\ngamma\n"
    assert "worker stopped" in done.stdout


@pytest.mark.e2e
def test_django_shop_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))}
    env["SHOP_HOME"] = str(tmp_path / "shop")
    done = subprocess.run(
        [sys.executable, str(REPO / "example_project" / "run_demo.py")],
        env=env, capture_output=True, text=True, timeout=240,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "file_processor imported and archived it" in out
    assert "health_check fired service_recovery after 3 failed polls in a row" in out
    history = out.split("$ celery -A shop cloaca history file_watcher")[1].split("$ celery")[0]
    assert history.count("succeeded") == 1  # one file, one execution
    assert (tmp_path / "shop" / "archive" / "orders-0001.csv").exists()
    assert "worker stopped" in out
