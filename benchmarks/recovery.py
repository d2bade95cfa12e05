"""Recovery from a SIGKILLed worker, with the library's default liveness settings.

One trigger fires the same context every second (the default overlap policy,
``skip``) into a step that runs for a minute on worker *victim* (``-c 1``).
A second worker, *survivor*, starts; the victim's whole process group is
SIGKILLed in the middle of the step. Measured from the kill, on Redis's clock
(the marks') and the store's: when the execution ended ``lost``, and when the
same context started again on the survivor. The defaults make the bound
``heartbeat_interval times heartbeat_misses`` (30 s) plus up to one sweep (5 s)
plus one poll interval.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.measure import Bench, Figures

INTERVAL = 1.0
TIMEOUT = 180.0  # only a bug reaches it: the default lease is 30 s


def recovery(bench: Bench) -> Figures:
    from benchmarks.measure import trigger_name
    from cloaca_celery.sqlstore import SqlStore

    svc = bench.svc
    name = trigger_name(0)

    def starts() -> list[dict[str, Any]]:
        return [json.loads(v) for v in svc.redis.lrange("bench:recovery:starts", 0, -1)]

    def redis_now() -> float:
        seconds, micros = svc.redis.time()
        return float(seconds) + micros / 1e6

    with svc.schema() as (_schema, url):
        svc.reset_redis()
        svc.redis.set("bench:recovery:sleep", 60)
        with bench.processes(url, "recovery", 1, INTERVAL) as procs:
            victim = procs.worker(name="victim", concurrency=1)
            # Beat once the victim is ready: its one process is not to start behind a backlog of ticks.
            bench.wait_ready(procs, workers=1)
            procs.beat()
            bench.wait_ready(procs, workers=1, beats=1)
            svc.redis.set("bench:recovery:go", 1)
            first = bench.wait(starts, 120, "the step to start on the victim", procs)[0]
            procs.worker(name="survivor", concurrency=2)
            bench.wait_ready(procs, workers=2)
            svc.redis.set("bench:recovery:sleep", 0.2)
            victim.stopped = True  # its exit is the point, not a failure
            os.killpg(victim.pid, signal.SIGKILL)
            killed_at = redis_now()
            again = bench.wait(
                lambda: [s for s in starts() if s["execution_id"] != first["execution_id"]],
                TIMEOUT, "the same context to start again after the kill", procs,
            )[0]
            svc.redis.delete("bench:recovery:go")
            store = SqlStore(url)
            try:
                row = store.get_execution(first["execution_id"])
            finally:
                store.close()
            time.sleep(0.5)
    if row["status"] != "lost" or row["completed_at"] is None:
        raise RuntimeError(f"{name}: the killed execution ended {row['status']!r}, not lost: {row}")
    if not again["hostname"].startswith("survivor"):
        raise RuntimeError(f"{name}: the context ran again on {again['hostname']}, not on the survivor")
    return {
        "recovery_lost": row["completed_at"].timestamp() - killed_at,
        "recovery_refire": again["t"] - killed_at,
    }
