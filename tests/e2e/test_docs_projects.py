"""The projects the docs describe, built from the pages' own code and commands, as a reader would.

Each test copies a page's project files (blocks headed ``# path.py``) into a
fresh folder and runs the page's commands there, with real ``celery`` worker
and beat processes: the README's quickstart (Redis), the getting-started
page's first trigger (the embedded default, no server) and the Django page's
project, whose trigger lives in an app's ``triggers.py``. The only thing a
test adds is isolation: Celery reads ``CELERY_BROKER_URL`` and
``CELERY_RESULT_BACKEND`` from the environment before any setting, so each
test points the page's Redis URL at a database of its own.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docs.pages import REPO, commands, write_project
from tests.e2e.harness import CeleryProcess, wait_until

pytestmark = [pytest.mark.e2e]

BUILT_PAGES = ("README.md", "docs/index.md", "docs/django.md")


class Reader:
    """Runs a page's commands in one folder, the way a reader types them."""

    def __init__(self, folder: Path, page: str, env: dict[str, str], rename: dict[str, str] | None = None,
                 python: str = sys.executable):
        """``python`` is the interpreter whose ``celery`` the commands run (another venv's, say)."""
        self.folder = folder
        self.python = python
        self.page = REPO / page
        self.rename = rename or {}
        self.commands = [self._renamed(c) for c in commands(self.page)]
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "E2E_", "DJANGO_"))}
        base["PYTHONUNBUFFERED"] = "1"
        base["PATH"] = os.pathsep.join([str(Path(python).parent), base.get("PATH", "")])
        self.env = {**base, **env}
        self.processes: list[CeleryProcess] = []

    def _renamed(self, text: str) -> str:
        import re

        for old, new in self.rename.items():
            text = re.sub(rf"\b{re.escape(old)}\b", new, text)
        return text

    def command(self, startswith: str) -> str:
        """The page's command that starts with ``startswith`` (it must be on the page)."""
        wanted = self._renamed(startswith)
        found = [c for c in self.commands if c.startswith(wanted)]
        assert found, f"{self.page.name} shows no command starting with {wanted!r}: {self.commands}"
        return found[0]

    def start(self, startswith: str) -> CeleryProcess:
        """Start a long-running ``celery ...`` command of the page (stopped by pid after the test)."""
        args = shlex.split(self.command(startswith))
        assert args[0] == "celery", args
        proc = CeleryProcess(f"{args[2]}-{len(self.processes)}", args[1:], self.env, self.folder, self.python)
        self.processes.append(proc)
        return proc

    def run(self, startswith: str) -> subprocess.CompletedProcess[str]:
        """Run a short command of the page in a shell, in the folder, and return what it printed."""
        line = self.command(startswith)
        return subprocess.run(["bash", "-c", line], cwd=self.folder, env=self.env, capture_output=True,
                              text=True, timeout=120)

    def history(self, trigger: str) -> list[dict[str, Any]]:
        app = self._renamed("proj")
        done = subprocess.run(
            [self.python, "-m", "celery", "-A", app, "cloaca", "history", trigger, "--json"],
            cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=120,
        )
        if done.returncode != 0:
            return []  # no schedule row yet: no worker has started
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        return rows

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} -----\n{p.log()[-5000:]}" for p in self.processes)


@pytest.fixture
def readers() -> Iterator[list[Reader]]:
    made: list[Reader] = []
    yield made
    for reader in made:
        reader.stop_all()


def _succeeded(reader: Reader, trigger: str) -> list[dict[str, Any]]:
    return [r for r in reader.history(trigger) if r["status"] == "succeeded"]


def run_the_readme_quickstart(reader: Reader) -> None:
    """Write the README's ``proj.py``, start its worker and beat, drop an order, see it processed."""
    folder = reader.folder
    assert [p.name for p in write_project(reader.page, folder)] == ["proj.py"]
    worker = reader.start("celery -A proj worker")
    beat = reader.start("celery -A proj beat")
    worker.wait_for_log("cloaca: worker ready: 1 trigger(s), 1 workflow(s)", timeout=60)
    beat.wait_for_log("cloaca: beat ready: 1 trigger(s)", timeout=60)
    dropped = reader.run("mkdir -p orders")
    assert dropped.returncode == 0, dropped.stderr
    done = wait_until(lambda: _succeeded(reader, "order_trigger"), 60, "the order to be processed")
    assert done[0]["context"] == {"order_id": "A-1001"}
    assert (folder / "orders" / "A-1001.done").exists()
    shown = reader.run("celery -A proj cloaca history order_trigger")
    assert shown.returncode == 0 and "succeeded" in shown.stdout, shown.stdout + shown.stderr
    assert "sqlite:///" in worker.log() and str(folder) in worker.log(), "the store's file is named in full"
    assert "Traceback" not in reader.logs(), reader.logs()


@pytest.mark.redis
def test_readme_quickstart_runs_as_written(tmp_path: Path, redis_url: str, readers: list[Reader]) -> None:
    isolated = {"CELERY_BROKER_URL": redis_url, "CELERY_RESULT_BACKEND": redis_url}
    reader = Reader(tmp_path, "README.md", isolated)
    readers.append(reader)
    run_the_readme_quickstart(reader)


def test_first_trigger_of_getting_started_runs_as_written(tmp_path: Path, readers: list[Reader]) -> None:
    reader = Reader(tmp_path, "docs/index.md", {})
    readers.append(reader)
    assert [p.name for p in write_project(reader.page, tmp_path)] == ["proj.py"]
    worker = reader.start("celery -A proj worker -B")
    worker.wait_for_log("cloaca: worker ready: 1 trigger(s), 1 workflow(s)", timeout=60)
    knocked = reader.run("echo Ada > door.txt")
    assert knocked.returncode == 0, knocked.stderr
    done = wait_until(lambda: _succeeded(reader, "someone_arrived"), 60, "Ada to be greeted")
    assert done[0]["context"] == {"name": "Ada"}
    wait_until(lambda: "hello Ada" in worker.log(), 30, "the greeting in the worker's log")
    assert not (tmp_path / "door.txt").exists()
    shown = reader.run("celery -A proj cloaca history someone_arrived")
    assert shown.returncode == 0 and "succeeded" in shown.stdout, shown.stdout + shown.stderr


@pytest.mark.redis
def test_django_page_builds_a_project_whose_app_triggers_py_fires(
    tmp_path: Path, redis_url: str, readers: list[Reader]
) -> None:
    """A fresh ``startproject``, with other names than the page's (as the page says to change them)."""
    rename = {"proj": "shop", "orders": "stock"}
    reader = Reader(tmp_path, "docs/django.md",
                    {"CELERY_BROKER_URL": redis_url, "CELERY_RESULT_BACKEND": redis_url}, rename)
    readers.append(reader)
    started = subprocess.run([sys.executable, "-m", "django", "startproject", "shop", str(tmp_path)],
                             env=reader.env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    app = reader.run("python manage.py startapp stock")
    assert app.returncode == 0, app.stderr
    written = {p.relative_to(tmp_path).as_posix() for p in write_project(reader.page, tmp_path, rename)}
    assert written == {"shop/settings.py", "shop/celery.py", "shop/__init__.py", "stock/triggers.py"}
    migrated = reader.run("python manage.py migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    worker = reader.start("celery -A shop worker")
    beat = reader.start("celery -A shop beat")
    worker.wait_for_log("cloaca: worker ready: 1 trigger(s), 1 workflow(s), store django database", 60)
    beat.wait_for_log("cloaca: beat ready: 1 trigger(s)", timeout=60)
    dropped = reader.run("mkdir -p inbox")
    assert dropped.returncode == 0, dropped.stderr
    done = wait_until(lambda: _succeeded(reader, "new_order_file"), 60, "the file to be imported")
    assert done[0]["context"] == {"filename": "monday.csv"}
    assert not (tmp_path / "inbox" / "monday.csv").exists()
    check = subprocess.run([sys.executable, "-m", "celery", "-A", "shop", "cloaca", "check"], cwd=tmp_path,
                           env=reader.env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "Traceback" not in reader.logs(), reader.logs()
