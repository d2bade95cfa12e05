"""Real ``celery worker`` / ``celery beat`` processes of the benchmark app.

Like ``tests/e2e/harness.py``: each process starts in a session of its own
and is stopped by its process group id (SIGTERM, then SIGKILL), never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP = "benchmarks.apps.bench_app"


class Proc:
    """One running celery command and its log file."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], workdir: Path, wrap: list[str] | None = None
    ) -> None:
        self.name = name
        self.log_path = workdir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.started = time.time()
        self.stopped = False
        self.popen = subprocess.Popen(
            [sys.executable, *(wrap or []), "-m", "celery", "-A", APP, *args],
            cwd=workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 10.0) -> None:
        self.stopped = True
        if self.popen.poll() is None:
            # The main process only: a worker's warm shutdown lets its pool children finish.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        # Prefork children share the group: none may outlive the measurement.
        _signal_group(self.pid, signal.SIGKILL)
        if not self._log.closed:
            self._log.close()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Processes:
    """Starts worker and beat processes with one environment; stops them all."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "BENCH_", "DJANGO_"))}
        base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH", "")]))
        base["PYTHONUNBUFFERED"] = "1"
        base.update(env)
        self.env = base
        self.procs: list[Proc] = []

    def worker(
        self, name: str = "worker", concurrency: int = 2, pool: str = "prefork",
        wrap: list[str] | None = None, queues: str | None = None,
    ) -> Proc:
        """A worker; ``wrap`` runs it under another module (``["-m", "pyinstrument", ...]``);
        ``queues``: its ``-Q``."""
        args = [
            "worker", "-l", "warning", "-P", pool, "-c", str(concurrency),
            "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h",
            "--without-mingle", "--without-gossip", "--without-heartbeat",
            *(["-Q", queues] if queues else []),
        ]
        return self._start(name, args, wrap)

    def beat(self, name: str = "beat") -> Proc:
        schedule = self.workdir / f"{name}-{uuid.uuid4().hex[:6]}-schedule"
        return self._start(name, ["beat", "-l", "warning", "-s", str(schedule)])

    def _start(self, name: str, args: list[str], wrap: list[str] | None = None) -> Proc:
        proc = Proc(name, args, self.env, self.workdir, wrap)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def check_alive(self) -> None:
        for proc in self.procs:
            if not proc.stopped and not proc.running():
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log_tail()}")

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} -----\n{p.log_tail()}" for p in self.procs)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
