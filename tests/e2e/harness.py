"""Real ``celery worker`` / ``celery beat`` subprocesses for end-to-end tests, and what tests read back.

Each process is started in its own session and stopped by its process group
id (never by name): SIGTERM, then SIGKILL if it has not exited in time. The
app modules live in ``tests/e2e/apps`` and read their broker, store and
trigger selection from ``E2E_*`` environment variables (:func:`app_env`).
The fixtures that use all this (``redis_url``, ``launch``, ``store_url``,
``runner``) are in ``tests/e2e/conftest.py``; the fault suite reuses both.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloaca_celery import DefaultRunner

REPO = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent / "apps"


class CeleryProcess:
    """One running celery command, its log file and how to stop it."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], cwd: Path,
                 python: str = sys.executable) -> None:
        self.name = name
        self.log_path = cwd / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            [python, "-m", "celery", *args],
            cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait_exit(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if not self.running():
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}):\n{self.log()[-4000:]}")
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: {text!r} not logged within {timeout}s:\n{self.log()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group at once (main process and pool children): a crash."""
        _signal_group(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        # Prefork children share the group: make sure none outlives the test.
        _signal_group(self.pid, signal.SIGKILL)
        self._log.close()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class CeleryProject:
    """Starts worker and beat processes of one app module inside ``workdir``."""

    def __init__(self, workdir: Path, module: str, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.module = module
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "E2E_", "DJANGO_"))}
        base["PYTHONPATH"] = os.pathsep.join([str(APPS), str(REPO)])
        base["PYTHONUNBUFFERED"] = "1"
        base.update(env)
        self.env = base
        self.processes: list[CeleryProcess] = []

    def worker(self, *extra: str, concurrency: int = 2, name: str | None = None,
               env: dict[str, str] | None = None) -> CeleryProcess:
        """A ``celery worker``; ``env`` adds variables for this process only (a faked clock)."""
        node = name or f"w{len(self.processes)}"
        args = [
            "-A", self.module, "worker", "-l", "info", "-c", str(concurrency),
            "-n", f"{node}-{uuid.uuid4().hex[:6]}@%h", "--without-mingle", "--without-gossip",
            *extra,
        ]
        return self._start(node, args, env)

    def beat(self, *extra: str, name: str = "beat", env: dict[str, str] | None = None) -> CeleryProcess:
        schedule = self.workdir / f"{name}-schedule"
        args = ["-A", self.module, "beat", "-l", "info", "-s", str(schedule), *extra]
        return self._start(name, args, env)

    def command(self, name: str, *args: str) -> CeleryProcess:
        """Another long-running ``celery -A <module> ...`` command, stopped with the rest."""
        return self._start(name, ["-A", self.module, *args])

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> CeleryProcess:
        proc = CeleryProcess(name, args, {**self.env, **(env or {})}, self.workdir)
        self.processes.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} -----\n{p.log()[-6000:]}" for p in self.processes)


def wait_until(
    check: Callable[[], Any], timeout: float, what: str, project: CeleryProject | None = None
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the logs otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = project.logs() if project is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")
        time.sleep(0.05)


def app_env(redis_url: str, store_url: str, triggers: str | None = None, **extra: str) -> dict[str, str]:
    """The ``E2E_*`` variables of an app of ``tests/e2e/apps``: its Redis, store and triggers to load."""
    env = {"E2E_REDIS_URL": redis_url, "E2E_DATABASE_URL": store_url, **extra}
    if triggers is not None:
        env["E2E_TRIGGERS"] = triggers
    return env


def records(client: Any, key: str) -> list[dict[str, Any]]:
    """The JSON records an app's steps or triggers pushed onto the Redis list ``key``, in order."""
    return [json.loads(x) for x in client.lrange(key, 0, -1)]


def history(runner: DefaultRunner, trigger: str) -> list[dict[str, Any]]:
    """The trigger's executions, newest first; none before a worker has created its schedule row."""
    try:
        return runner.get_trigger_execution_history(trigger)
    except KeyError:
        return []


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` spans open at one instant (touching ends do not overlap)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = current = 0
    for _, delta in events:
        current += delta
        most = max(most, current)
    return most
