"""``make demo``: start one embedded worker (with beat inside), drop a file, watch it run.

Needs no server. Ends by itself: the worker is stopped (by its process
group) whatever happens, within about a minute at worst.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKDIR = Path(os.environ.get("CLOACA_DEMO_DIR", HERE)).resolve()
HOME = WORKDIR / ".cloaca"
INBOX = WORKDIR / "inbox"
OUTBOX = WORKDIR / "outbox"


def main() -> int:
    for folder in (HOME / "broker", INBOX, OUTBOX):
        shutil.rmtree(folder, ignore_errors=True)
    INBOX.mkdir(parents=True)
    HOME.mkdir(exist_ok=True)
    log_path = HOME / "demo-worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), env.get("PYTHONPATH", "")])
    env["CLOACA_DEMO_DIR"] = str(WORKDIR)
    command = [sys.executable, "-m", "celery", "-A", "proj", "worker", "-B", "-c", "2",
               "-l", "info", "--without-mingle", "--without-gossip"]
    print("$", " ".join(command[2:]), " (in example_project/quickstart)")
    with log_path.open("wb") as log:
        worker = subprocess.Popen(command, cwd=WORKDIR, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            return run(worker, log_path)
        finally:
            stop(worker)
            print(f"worker stopped; its log is {log_path}")


def run(worker: subprocess.Popen[bytes], log_path: Path) -> int:
    if not wait(lambda: "ready." in log_path.read_text(errors="replace"), 60, worker):
        print("the worker did not start:\n" + log_path.read_text(errors="replace")[-3000:])
        return 1
    print("worker and beat are up; the trigger 'file_watcher' polls ./inbox every 500ms")
    dropped = time.time()
    (INBOX / "report.txt").write_text("alpha\nbeta\ngamma\n")
    print("dropped inbox/report.txt")
    if not wait(lambda: (OUTBOX / "report.txt").exists(), 30, worker):
        print("the workflow did not run:\n" + log_path.read_text(errors="replace")[-3000:])
        return 1
    print(f"workflow 'file_processor' archived it to outbox/ {time.time() - dropped:.2f}s after the drop")
    for line in log_path.read_text(errors="replace").splitlines():
        if "file_watcher:" in line or ("succeeded in" in line and "count_lines" in line):
            print("  log:", line.split("] ", 1)[-1][:160])
    sys.path[:0] = [str(HERE), str(REPO)]
    from cloaca_celery.sqlstore import SqlStore

    store = SqlStore(f"sqlite:///{HOME / 'cloaca.db'}")
    try:
        schedule = store.get_schedule("file_watcher")
    finally:
        store.close()
    shown = {k: schedule[k] for k in ("trigger_name", "workflow", "poll_interval", "enabled",
                                       "last_poll_at", "last_fire_at", "consecutive_errors")}
    print("schedule:", json.dumps(shown, default=str, indent=2))
    return 0


def wait(check: object, timeout: float, worker: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return True
        if worker.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
