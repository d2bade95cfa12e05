"""The example shop (Django + django_cloaca) running: switching a trigger off and on through the
Django store takes effect at its next poll, with the worker and beat left running."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import REPO

pytestmark = [pytest.mark.e2e]

SHOP = REPO / "example_project"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))}
    env.update(SHOP_HOME=str(home), DJANGO_SETTINGS_MODULE="shop.settings",
               PYTHONPATH=os.pathsep.join([str(SHOP), str(REPO)]))
    return env


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=SHOP, env=_env(home), capture_output=True,
                          text=True, timeout=120)


def _wait(check, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_disabling_through_the_django_store_stops_a_running_trigger(tmp_path: Path) -> None:
    home = tmp_path / "shop"
    (home / "inbox").mkdir(parents=True)
    assert _run(home, "manage.py", "migrate", "--verbosity", "0").returncode == 0
    log_path = home / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "shop", "worker", "-B", "-c", "2", "-l", "info",
             "--without-mingle", "--without-gossip"],
            cwd=SHOP, env=_env(home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            assert _wait(lambda: "ready." in log_path.read_text(errors="replace"), 60), log_path.read_text()
            done = _run(home, "-m", "celery", "-A", "shop", "cloaca", "disable", "file_watcher")
            assert done.returncode == 0 and "file_watcher: disabled" in done.stdout, done.stderr
            # A poll sent just before the switch may still run: it starts within 0.45 s (half an
            # interval after it was sent, before the next slot), and a busy machine adds a moment.
            time.sleep(2.0)
            (home / "inbox" / "held.csv").write_text("A-1,1\n")
            time.sleep(3.0)  # six intervals of file_watcher
            assert (home / "inbox" / "held.csv").exists(), "a disabled trigger fired"
            assert not (home / "archive" / "held.csv").exists()
            enabled = _run(home, "-m", "celery", "-A", "shop", "cloaca", "enable", "file_watcher")
            assert enabled.returncode == 0, enabled.stderr
            assert _wait(lambda: (home / "archive" / "held.csv").exists(), 30), log_path.read_text()[-3000:]
            history = _run(home, "-m", "celery", "-A", "shop", "cloaca", "history", "file_watcher").stdout
            assert history.count("succeeded") == 1
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                try:
                    worker.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
    shutil.rmtree(home, ignore_errors=True)
