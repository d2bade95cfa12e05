"""``make demo``: the example shop on the embedded default, end to end, with no server.

Migrates a fresh SQLite database, starts one ``celery -A shop worker -B``
(beat inside), drops a CSV file into the inbox, waits for the workflow,
makes the payment API "fail" until the health check fires after three
failed polls, prints the triggers and their history with the CLI, and stops
the worker by its process group. Ends by itself in about half a minute.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOME = Path(os.environ.get("SHOP_HOME", HERE / ".demo")).resolve()


def env() -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))}
    base.update(
        SHOP_HOME=str(HOME), DJANGO_SETTINGS_MODULE="shop.settings", PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join([str(HERE), str(REPO)]),
    )
    return base


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=HERE, env=env(), capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def main() -> int:
    shutil.rmtree(HOME, ignore_errors=True)
    (HOME / "inbox").mkdir(parents=True)
    print(f"demo folder: {HOME}")
    run("manage.py", "migrate", "--verbosity", "0")
    print("$ python manage.py migrate            (SQLite, django_cloaca tables)")
    log_path = HOME / "worker.log"
    command = ["-m", "celery", "-A", "shop", "worker", "-B", "-c", "2", "-l", "info",
               "--without-mingle", "--without-gossip"]
    print("$ celery -A shop worker -B -c 2       (broker and results in", HOME / ".cloaca", ")")
    with log_path.open("wb") as log:
        worker = subprocess.Popen([sys.executable, *command], cwd=HERE, env=env(), stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return scenario(worker, log_path)
        finally:
            stop(worker)
            print(f"worker stopped; its log: {log_path}")


def scenario(worker: subprocess.Popen[bytes], log_path: Path) -> int:
    def log() -> str:
        return log_path.read_text(errors="replace")

    if not wait(lambda: "ready." in log(), 60, worker):
        print("the worker did not start:\n" + log()[-3000:])
        return 1
    print("worker and beat are up")

    dropped = time.time()
    (HOME / "inbox" / "orders-0001.csv").write_text("A-1001,3\nA-1002,1\nA-1003,7\n")
    print("dropped inbox/orders-0001.csv")
    if not wait(lambda: (HOME / "archive" / "orders-0001.csv").exists(), 30, worker):
        print("the file was not processed:\n" + log()[-3000:])
        return 1
    print(f"file_processor imported and archived it {time.time() - dropped:.2f}s after the drop")

    (HOME / "payment_api_down").write_text("")
    print("the payment API is now failing its health check (polled every 1s)...")
    if not wait(lambda: "health_check: fired workflow 'service_recovery'" in log(), 30, worker):
        print("the health check did not fire:\n" + log()[-3000:])
        return 1
    (HOME / "payment_api_down").unlink()
    print("health_check fired service_recovery after 3 failed polls in a row")
    time.sleep(1.0)

    print("\n$ celery -A shop cloaca list")
    print(run("-m", "celery", "-A", "shop", "cloaca", "list"))
    for trigger in ("file_watcher", "health_check"):
        print(f"$ celery -A shop cloaca history {trigger}")
        print(run("-m", "celery", "-A", "shop", "cloaca", "history", trigger))
    return 0


def wait(check: Callable[[], bool], timeout: float, worker: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if worker.poll() is not None:
            return False
        time.sleep(0.1)
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
