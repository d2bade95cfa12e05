"""Helpers of the fault-injection suite: the app's environment, the store's rows, a private Redis.

What the end-to-end suite has already (``records``, ``max_overlap``, the
process harness) is imported from ``tests/e2e/harness.py``, not copied.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cloaca_celery.sqlstore import SqlStore, claims
from cloaca_celery.store import FINAL_STATUSES
from tests.e2e.harness import REPO, CeleryProcess, CeleryProject
from tests.support.services import services_required

APPS = Path(__file__).resolve().parent / "apps"
MODULE = "faults_app"
ALL_QUEUES = "celery,faults.steps"
STEPS_QUEUE = "faults.steps"


def faults_project(
    launch: Callable[..., CeleryProject], *, broker_url: str, database_url: str, triggers: str,
    note_url: str | None = None, **options: str,
) -> CeleryProject:
    """A project of ``faults_app``; ``options`` are ``FAULTS_*`` variables without the prefix."""
    env = {
        "PYTHONPATH": os.pathsep.join([str(APPS), str(REPO)]),
        "FAULTS_BROKER_URL": broker_url,
        "FAULTS_NOTE_URL": note_url or broker_url,
        "FAULTS_DATABASE_URL": database_url,
        "FAULTS_TRIGGERS": triggers,
        **{f"FAULTS_{key.upper()}": str(value) for key, value in options.items()},
    }
    project: CeleryProject = launch(MODULE, **env)
    return project


def history(store: SqlStore, name: str) -> list[dict[str, Any]]:
    """The trigger's execution rows, oldest first."""
    return list(reversed(store.execution_history(name)))


def schedule(store: SqlStore, name: str) -> dict[str, Any] | None:
    try:
        return store.get_schedule(name)
    except KeyError:
        return None


def claim_rows(store: SqlStore) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(select(claims))]


def leaked_claims(store: SqlStore) -> list[dict[str, Any]]:
    """Claims whose execution has ended (or has no row): nothing should ever leave one behind."""
    leaked = []
    for claim in claim_rows(store):
        try:
            status = store.get_execution(claim["execution_id"])["status"]
        except KeyError:
            status = None
        if status is None or status in FINAL_STATUSES:
            leaked.append({**claim, "status": status})
    return leaked


def log_lines(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def exited(project: CeleryProject) -> list[str]:
    """One line per process of ``project`` that is no longer running, with its last critical log line."""
    dead = []
    for proc in project.processes:
        if proc.running():
            continue
        critical = [line for line in proc.log().splitlines() if "CRITICAL" in line or "Unrecoverable" in line]
        dead.append(f"{proc.name} (pid {proc.pid}) exited with {proc.popen.returncode}: "
                    f"{critical[-1] if critical else 'no critical line logged'}")
    return dead


def log_time(line: str) -> float:
    """The epoch time of a Celery log line (``[2024-05-01 12:00:00,123: INFO/...] ...``, local time)."""
    stamp = line[1:line.index(": ")]
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def pool_children(pid: int) -> set[int]:
    """Pids of the processes whose parent is ``pid`` (a prefork worker's pool)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its closing parenthesis.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            children.add(int(entry.name))
    return children


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def need_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        message = "redis-server is not installed (the broker-outage test starts a private one)"
        if services_required():
            pytest.fail(f"{message} and CLOACA_TEST_REQUIRE_SERVICES=1")
        pytest.skip(message)
    return path


class RedisServer:
    """A ``redis-server`` of this test alone, on a free port: stopped and restarted by its pid."""

    def __init__(self, executable: str, workdir: Path) -> None:
        self.executable = executable
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 10.0) -> None:
        assert self.popen is None, "already running"
        log = (self.workdir / f"redis-{self.starts}.log").open("wb")
        self.popen = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        self.starts += 1
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if self.popen.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"redis-server on port {self.port} did not start")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        popen, self.popen = self.popen, None
        if popen is None or popen.poll() is not None:
            return
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                popen.kill()
            popen.wait(timeout=10)


class Supervisor:
    """What a process supervisor does for workers (systemd ``Restart=always``): a worker that
    exits is started again with the same arguments, half a second later.

    ``restarts`` holds one line per exit (the worker's name, exit code and last
    critical log line), so a test can say which exits it expected. The
    replacement of worker ``w`` is named ``w-r1``, ``w-r2``...; ``current(w)``
    is the one running now. ``stop()`` (called by the ``supervise`` fixture
    before the processes are stopped) ends the watching, never a process.
    """

    def __init__(self, project: CeleryProject, restart_after: float = 0.5) -> None:
        self.project = project
        self.restart_after = restart_after
        self.restarts: list[str] = []
        self._specs: dict[str, tuple[tuple[str, ...], int]] = {}
        self._current: dict[str, CeleryProcess] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="test-supervisor", daemon=True)
        self._thread.start()

    def worker(self, *extra: str, concurrency: int, name: str) -> CeleryProcess:
        with self._lock:
            self._specs[name] = (extra, concurrency)
            proc = self.project.worker(*extra, concurrency=concurrency, name=name)
            self._current[name] = proc
            return proc

    def current(self, name: str) -> CeleryProcess:
        with self._lock:
            return self._current[name]

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        while not self._stopping.wait(0.1):
            with self._lock:
                dead = [(name, proc) for name, proc in self._current.items() if not proc.running()]
            for name, proc in dead:
                if self._stopping.wait(self.restart_after):
                    return
                critical = [line for line in proc.log().splitlines()
                            if "Unrecoverable" in line or "CRITICAL" in line]
                extra, concurrency = self._specs[name]
                with self._lock:
                    count = sum(line.startswith(f"{name} ") for line in self.restarts) + 1
                    self.restarts.append(f"{name} exited with {proc.popen.returncode}: "
                                         f"{critical[-1] if critical else 'no critical line logged'}")
                    self._current[name] = self.project.worker(*extra, concurrency=concurrency,
                                                              name=f"{name}-r{count}")
