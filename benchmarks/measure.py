"""The measurements: each starts real worker/beat processes and returns its figures for one run.

Every ratio is measured in one session with one worker configuration (same
app module, prefork pool, concurrency 2, default prefetch, same broker): the
bare-Celery side first, the cloaca side right after, so drift hits both.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.counting import FLUSH_PERIOD, LocalSqlCount
from benchmarks.processes import Processes
from benchmarks.recovery import recovery
from benchmarks.services import Services

WORKFLOW = "bench_flow"
HEALTH_TABLE = "cloaca_health_minutes"
HEALTH_FLUSH = 5.5
"""A little more than the default ``cloaca_health_flush_interval`` (the benchmark app keeps it)."""
LONG_INTERVAL = 300.0  # so a backlog of polls never expires or runs late while it drains
DISPATCH_QUEUE = "cloaca.dispatch"
"""The dispatcher's own queue in the ``dispatch_queue`` layout of :meth:`Bench.scale`."""
EMBEDDED = "embedded"
"""The database URL of :meth:`Bench.processes` that runs them on the embedded default instead."""


@dataclass(frozen=True)
class Size:
    name: str
    skip_polls: int
    fire_samples: int
    fire_interval: float
    fire_writes: int
    scale_triggers: int
    large_triggers: int
    light_triggers: int
    scale_warmup: float
    scale_seconds: int
    memory_triggers: int
    memory_ticks: float
    flush_every: int
    runs: int


SIZES = {
    "full": Size("full", skip_polls=2000, fire_samples=100, fire_interval=0.2, fire_writes=200,
                 scale_triggers=1000, large_triggers=10_000, light_triggers=300, scale_warmup=5.0,
                 scale_seconds=30,
                 memory_triggers=10_000, memory_ticks=5.0, flush_every=25, runs=3),
    "tiny": Size("tiny", skip_polls=100, fire_samples=10, fire_interval=0.2, fire_writes=10,
                 scale_triggers=20, large_triggers=40, light_triggers=10, scale_warmup=1.5, scale_seconds=3,
                 memory_triggers=200, memory_ticks=1.0, flush_every=5, runs=1),
}

Figures = dict[str, Any]


class Bench:
    """One benchmark session: services, a work directory for logs, the runner's SQL counter."""

    def __init__(self, services: Services, size: Size, workdir: Path) -> None:
        self.svc = services
        self.size = size
        self.workdir = workdir
        self.sql = LocalSqlCount()

    # -- helpers ---------------------------------------------------------------

    def env(self, database_url: str, mode: str, triggers: int, interval: float) -> dict[str, str]:
        return {
            **({"BENCH_EMBEDDED": str(self.workdir / f"embedded-{uuid.uuid4().hex[:8]}")}
               if database_url == EMBEDDED else {}),
            "BENCH_REDIS_URL": self.svc.redis_url,
            "BENCH_DATABASE_URL": database_url,
            "BENCH_MODE": mode,
            "BENCH_TRIGGERS": str(triggers),
            "BENCH_INTERVAL": repr(float(interval)),
            "BENCH_FLUSH_EVERY": str(self.size.flush_every),
        }

    def processes(self, database_url: str, mode: str, triggers: int, interval: float) -> Processes:
        return Processes(self.workdir, self.env(database_url, mode, triggers, interval))

    def client(self) -> Any:
        """A plain Celery app on the benchmark's broker, for the bare side."""
        from celery import Celery

        app = Celery(f"bench_client_{uuid.uuid4().hex[:6]}", broker=self.svc.redis_url,
                     backend=self.svc.redis_url)
        app.conf.update(broker_connection_retry_on_startup=True, result_expires=600)
        return app

    def prepare_store(self, database_url: str, count: int, interval: float, allow_concurrent: bool) -> None:
        """Create the tables and ``count`` schedule rows, all due now (no start-up spread)."""
        from cloaca_celery.sqlstore import SqlStore
        from cloaca_celery.store import TriggerSpec

        store = SqlStore(database_url)
        try:
            store.ensure_schema()
            specs = [TriggerSpec(trigger_name(i), WORKFLOW, float(interval), allow_concurrent)
                     for i in range(count)]
            store.sync_triggers(specs, time.time(), prune=False, spread=False)
        finally:
            store.close()

    def dispatch(self, database_url: str, batched: bool = False) -> tuple[int, int, int, int]:
        """Publish the due polls through the library's own dispatcher, from this process (one
        message per poll, or ``batched`` as beat's dispatcher sends them).

        Returns (polls sent, write statements, rows written, all statements) of the dispatch.
        """
        from celery import Celery

        import cloaca_celery as cloaca
        from cloaca_celery.builtin_tasks import POLL_BATCH_TASK, POLL_TASK
        from cloaca_celery.dispatch import dispatch_due
        from cloaca_celery.installation import get_installation

        app = Celery(f"bench_dispatch_{uuid.uuid4().hex[:6]}", broker=self.svc.redis_url)
        app.conf.update(broker_connection_retry_on_startup=True)
        cloaca.install(app, database_url=database_url)
        installation = get_installation(app)
        settings, store = installation.settings, installation.store
        writes, rows, statements = self.sql.writes, self.sql.rows, self.sql.all
        try:
            sent = dispatch_due(app, settings, store, installation.clock, POLL_TASK, {},
                                batch_task=POLL_BATCH_TASK if batched else None,
                                limit=settings.dispatch_batch_size)
        finally:
            writes, rows, statements = (
                self.sql.writes - writes, self.sql.rows - rows, self.sql.all - statements
            )
            store.close()
            app.close()
        return sent, writes, rows, statements

    def wait(self, check: Callable[[], Any], timeout: float, what: str, procs: Processes) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            procs.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}\n{procs.logs()}")
            time.sleep(0.02)

    def wait_ready(self, procs: Processes, workers: int = 0, beats: int = 0, timeout: float = 120) -> None:
        self.wait(
            lambda: (self.svc.count("bench:ready:worker") >= workers
                     and self.svc.count("bench:ready:beat") >= beats),
            timeout, f"{workers} worker(s) and {beats} beat(s) to start", procs,
        )

    def drain_rate(self, key: str, n: int, procs: Processes) -> float:
        """Tasks/s while the counter ``key`` goes from 10% to 90% of ``n`` (it must reach ``n``)."""
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + max(120.0, n / 5)
        while True:
            count = self.svc.count(key)
            samples.append((time.monotonic(), count))
            if count >= n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{key}: {count} of {n} done before the timeout\n{procs.logs()}")
            if len(samples) % 50 == 0:
                procs.check_alive()
            time.sleep(0.005)
        low = next(s for s in samples if s[1] >= 0.1 * n)
        high = next(s for s in samples if s[1] >= 0.9 * n)
        if high[0] <= low[0]:
            low = next(s for s in samples if s[1] > 0)
            high = samples[-1]
        if high[0] <= low[0]:
            raise RuntimeError(f"{key}: too few samples to time {n} tasks; use a larger size")
        return (high[1] - low[1]) / (high[0] - low[0])

    def settle_counts(self) -> None:
        time.sleep(FLUSH_PERIOD * 4)

    # -- 1. skip-poll throughput and writes per skipped poll ------------------------

    def skip_throughput(self) -> Figures:
        n = self.size.skip_polls
        svc = self.svc
        with svc.schema() as (schema, url):
            self.prepare_store(url, n, LONG_INTERVAL, allow_concurrent=False)

            # Bare Celery: n no-op tasks waiting, then the worker starts and drains them.
            svc.reset_redis()
            client = self.client()
            with client.producer_or_acquire() as producer:
                for _ in range(n):
                    client.send_task("bench.noop", producer=producer)
            client.close()
            before = svc.settled_rows_written(schema)
            with self.processes(url, "skip", n, LONG_INTERVAL) as procs:
                procs.worker()
                bare_rate = self.drain_rate("bench:done:bench.noop", n, procs)
                self.settle_counts()
                bare_writes, bare_all = svc.count("bench:sql:write"), svc.count("bench:sql:all")
            bare_rows = svc.settled_rows_written(schema) - before

            # cloaca: the dispatcher claims the n due slots and publishes n polls; same worker.
            svc.reset_redis()
            before = svc.settled_rows_written(schema)
            health_before = svc.rows_written(schema, HEALTH_TABLE)
            sent, dispatch_writes, dispatch_rows, dispatch_all = self.dispatch(url)
            if sent != n:
                raise RuntimeError(f"the dispatcher sent {sent} polls, expected {n}")
            with self.processes(url, "skip", n, LONG_INTERVAL) as procs:
                procs.worker()
                rate = self.drain_rate("bench:done:cloaca.poll", n, procs)
                # Health counts are written every cloaca_health_flush_interval: wait for a flush,
                # so that its statements are counted with the polls'.
                time.sleep(HEALTH_FLUSH)
                self.settle_counts()
                writes = svc.count("bench:sql:write") + dispatch_writes
                counted_rows = svc.count("bench:sql:rows") + dispatch_rows
                statements = svc.count("bench:sql:all") + dispatch_all
            rows = svc.settled_rows_written(schema) - before
            health_rows = svc.settled_rows_written(schema, table=HEALTH_TABLE) - health_before
        return {
            "skip_rowcount": counted_rows / n,
            "skip_health_rows": health_rows / n,
            "skip_rate": rate, "skip_rate_bare": bare_rate, "skip_ratio": rate / bare_rate,
            "skip_rows": rows / n, "skip_rows_bare": bare_rows / n,
            "skip_writes": writes / n, "skip_writes_bare": bare_writes / n,
            "skip_statements": statements / n, "skip_statements_bare": bare_all / n,
        }

    # -- 2. fire latency --------------------------------------------------------------

    def fire_latency(self) -> Figures:
        k, warm = self.size.fire_samples, 3
        svc = self.svc
        with svc.schema() as (_schema, url):
            svc.reset_redis()
            with self.processes(url, "latency", 1, self.size.fire_interval) as procs:
                procs.worker()
                self.wait_ready(procs, workers=1)
                client = self.client()
                hot: list[float] = []
                paced: list[float] = []
                try:
                    # Back to back, as fast as round trips go; then at the pace of the fires below
                    # (one per fire interval), so both sides start each round trip from idle.
                    for pause, into in ((0.0, hot), (self.size.fire_interval, paced)):
                        for _ in range(warm + k):
                            time.sleep(pause)
                            started = time.perf_counter()
                            result = client.send_task("bench.ping")
                            result.get(timeout=30)
                            into.append(time.perf_counter() - started)
                            result.forget()
                finally:
                    client.close()
                procs.beat()
                fired = self._fire_latencies(procs, warm)
        hot, paced = hot[warm:], paced[warm:]
        figures = {
            "fire_p50": percentile(fired, 50), "fire_p99": percentile(fired, 99),
            "fire_p50_bare": percentile(paced, 50), "fire_p99_bare": percentile(paced, 99),
            "fire_p50_bare_hot": percentile(hot, 50), "fire_p99_bare_hot": percentile(hot, 99),
        }
        figures["fire_p50_ratio_hot"] = figures["fire_p50"] / figures["fire_p50_bare_hot"]
        figures["fire_p50_ratio"] = figures["fire_p50"] / figures["fire_p50_bare"]
        figures["fire_p99_ratio"] = figures["fire_p99"] / figures["fire_p99_bare"]
        return figures

    def embedded_fire_latency(self) -> Figures:
        """Fire latency on the embedded default (filesystem broker, SQLite results and store in a
        folder of its own): one worker and beat, the same trigger as :meth:`fire_latency`."""
        self.svc.reset_redis()
        with self.processes(EMBEDDED, "latency", 1, self.size.fire_interval) as procs:
            procs.worker()
            self.wait_ready(procs, workers=1)
            procs.beat()
            fired = self._fire_latencies(procs, warm=3)
        return {"embedded_fire_p50": percentile(fired, 50), "embedded_fire_p99": percentile(fired, 99)}

    def _fire_latencies(self, procs: Processes, warm: int) -> list[float]:
        """The latencies the workflow's first step records (``bench:fire_latency``), past ``warm``."""
        k, redis = self.size.fire_samples, self.svc.redis
        timeout = 120 + (warm + k) * self.size.fire_interval * 3
        self.wait(lambda: redis.llen("bench:fire_latency") >= warm + k, timeout, f"{warm + k} fires", procs)
        return [float(v) for v in redis.lrange("bench:fire_latency", warm, warm + k - 1)]

    # -- 3. writes per fire -------------------------------------------------------------

    def fire_writes(self) -> Figures:
        m = self.size.fire_writes
        svc = self.svc
        with svc.schema() as (schema, url):
            self.prepare_store(url, m, LONG_INTERVAL, allow_concurrent=False)
            svc.reset_redis()
            before = svc.settled_rows_written(schema)
            sent, dispatch_writes, dispatch_rows, dispatch_all = self.dispatch(url)
            if sent != m:
                raise RuntimeError(f"the dispatcher sent {sent} polls, expected {m}")
            with self.processes(url, "fire", m, LONG_INTERVAL) as procs:
                procs.worker()
                self.wait(lambda: svc.count("bench:done:cloaca.complete") >= m, 120 + m,
                          f"{m} fired workflows to complete", procs)
                self.settle_counts()
                writes = svc.count("bench:sql:write") + dispatch_writes
                counted_rows = svc.count("bench:sql:rows") + dispatch_rows
                statements = svc.count("bench:sql:all") + dispatch_all
            rows = svc.settled_rows_written(schema) - before
        return {
            "fire_rows": rows / m, "fire_rowcount": counted_rows / m,
            "fire_writes": writes / m, "fire_statements": statements / m,
        }

    # -- 4. scale: many triggers at 1 s, one beat, two workers -----------------------------

    def scale(self, count: int, key: str, bare: bool = False, layout: str = "") -> Figures:
        """``count`` triggers at 1 s with one beat and two workers; figures named ``<key>_...``.

        ``layout="dispatch_queue"``: the dispatcher on a queue of its own
        (``cloaca_dispatch_queue``) and a third worker (``-c 1``) for it alone;
        ``"two_beats"``: two beats instead of one.

        ``bare``: the same load in bare Celery, for comparison: no beat and no
        triggers; this process sends ``count`` no-op tasks a second, each
        carrying its due time and expiring half a second after it, on the
        dispatcher's tick, with the due times spread over each second as
        cloaca spreads the triggers' slots. Figures named ``<key>_..._bare``.
        """
        seconds, interval = self.size.scale_seconds, 1.0
        svc = self.svc
        task = "bench.slot" if bare else "cloaca.poll"
        counters = (
            "bench:dispatched", f"bench:expired:{task}", "bench:sql:write", "bench:sql:rows", "bench:sql:all",
        )
        stop = threading.Event()
        with svc.schema() as (_schema, url):
            svc.reset_redis()
            procs = self.processes(url, "scale", 0 if bare else count, interval)
            beats = 0 if bare else 2 if layout == "two_beats" else 1
            queues = None
            if layout == "dispatch_queue":
                procs.env["BENCH_DISPATCH_QUEUE"] = DISPATCH_QUEUE
                queues = "celery"
            with procs:
                for number in range(beats):
                    procs.beat(f"beat{number + 1}")
                procs.worker("worker1", queues=queues)
                procs.worker("worker2", queues=queues)
                if layout == "dispatch_queue":
                    procs.worker("dispatcher", concurrency=1, queues=DISPATCH_QUEUE)
                self.wait_ready(procs, workers=3 if layout == "dispatch_queue" else 2, beats=beats)
                sender = threading.Thread(target=self._send_slots, args=(count, interval, stop), daemon=True)
                if bare:
                    sender.start()
                try:
                    time.sleep(self.size.scale_warmup)
                    start = math.ceil(time.time())
                    end = start + seconds
                    time.sleep(max(0.0, start - time.time()))
                    before = [svc.count(c) for c in counters]
                    time.sleep(max(0.0, end - time.time()))
                    after = [svc.count(c) for c in counters]
                finally:
                    stop.set()
                    if bare:
                        sender.join(30)
                        if sender.is_alive():  # it would send into the next measurement's queue
                            raise RuntimeError("the bare sender did not stop within 30 s")
                procs.check_alive()
                time.sleep(1.0 + FLUSH_PERIOD * 4)  # the last second's polls finish and are flushed
                buckets = svc.redis.hgetall("bench:polls")
                late = [v.decode() for v in svc.redis.lrange("bench:late", 0, -1)]
        sent, expired, writes, rows, statements = (b - a for a, b in zip(before, after, strict=True))
        executed = sum(int(v) for k, v in buckets.items() if start <= int(k) < end)
        expected = count * seconds / interval
        lateness, method = lateness_samples(late, start, end, interval)
        if bare:
            return {
                f"{key}_share_bare": executed / expected,
                f"{key}_rate_bare": executed / seconds,
                f"{key}_expired_bare": expired / seconds,
                f"{key}_late_p50_bare": percentile(lateness, 50) * 1000 if lateness else math.nan,
                f"{key}_late_p99_bare": percentile(lateness, 99) * 1000 if lateness else math.nan,
            }
        per_poll = max(executed, 1)
        return {
            f"{key}_share": executed / expected,
            f"{key}_rate": executed / seconds,
            f"{key}_sent": sent / seconds,
            f"{key}_expired": expired / seconds,
            f"{key}_late_p50": percentile(lateness, 50) * 1000 if lateness else math.nan,
            f"{key}_late_p99": percentile(lateness, 99) * 1000 if lateness else math.nan,
            f"{key}_late_method": method,
            f"{key}_rows": rows / per_poll,
            f"{key}_writes": writes / per_poll,
            f"{key}_statements": statements / per_poll,
        }

    def _send_slots(self, count: int, interval: float, stop: threading.Event) -> None:
        """The bare side's dispatcher: every 50 ms, the no-op tasks due since the last tick."""
        client = self.client()
        tick, sent_until = 0.05, time.time()
        try:
            with client.producer_or_acquire() as producer:
                while not stop.is_set():
                    now = time.time()
                    base = math.floor(sent_until / interval) * interval
                    due_times: list[float] = []
                    while base <= now:
                        due_times += [base + interval * i / count for i in range(count)
                                      if sent_until < base + interval * i / count <= now]
                        base += interval
                    for due in due_times:
                        if stop.is_set():  # a tick far behind holds thousands: never send past the end
                            break
                        expires = max(due + interval / 2 - time.time(), 0.05)
                        client.send_task("bench.slot", args=(due,), producer=producer, expires=expires,
                                         ignore_result=True)
                    sent_until = now
                    stop.wait(max(0.0, now + tick - time.time()))
        finally:
            client.close()

    # -- 4b. what one operation costs: the store's claims, a dispatcher, a worker process --------

    def operation_costs(self) -> Figures:
        """The per-operation costs that bound a deployment (``docs/performance.md``, several hosts).

        With ``large_triggers`` triggers due at once: the claim statements alone
        (``claim_due`` from this process, in the dispatcher's chunks), the whole
        dispatch (claims and batched messages, from this process), and one
        worker process (``-P solo``) draining those batches.
        """
        import cloaca_celery as cloaca
        from cloaca_celery.settings import DEFAULTS
        from cloaca_celery.sqlstore import SqlStore
        from cloaca_celery.testing import isolated_registries

        n, svc = self.size.large_triggers, self.svc
        chunk = int(DEFAULTS["dispatch_batch_size"])
        with svc.schema() as (_schema, url):
            self.prepare_store(url, n, LONG_INTERVAL, allow_concurrent=False)
            store = SqlStore(url)
            try:
                started, claimed = time.perf_counter(), 0
                while claimed < n:
                    got = len(store.claim_due(time.time(), chunk))
                    if not got:
                        raise RuntimeError(f"claim_due claimed {claimed} of {n} due triggers")
                    claimed += got
                claim_seconds = time.perf_counter() - started
            finally:
                store.close()
        with svc.schema() as (_schema, url), isolated_registries():
            self.prepare_store(url, n, LONG_INTERVAL, allow_concurrent=False)
            svc.reset_redis()
            # The dispatcher batches the triggers its process knows to be cheap: these skip.
            for i in range(n):
                cloaca.trigger(workflow=WORKFLOW, name=trigger_name(i), poll_interval=LONG_INTERVAL)(_skip)
            started, sent = time.perf_counter(), 0
            while sent < n:
                got = self.dispatch(url, batched=True)[0]
                if not got:
                    raise RuntimeError(f"the dispatcher sent {sent} of {n} due polls")
                sent += got
            dispatch_seconds = time.perf_counter() - started
            batches = svc.redis.llen("celery")
            with self.processes(url, "skip", n, LONG_INTERVAL) as procs:
                procs.worker("solo", concurrency=1, pool="solo")
                self.wait_ready(procs, workers=1)
                key = "bench:done:cloaca.poll_batch"
                start_count, started = svc.count(key), time.perf_counter()
                self.wait(lambda: svc.count(key) >= batches, 120 + n / 100, f"{batches} batches", procs)
                drain_seconds = time.perf_counter() - started
                drained = (batches - start_count) / max(batches, 1) * n
        return {
            "cost_claim_rate": n / claim_seconds,
            "cost_dispatch_rate": n / dispatch_seconds,
            "cost_batch_size": n / max(batches, 1),
            "cost_worker_rate": drained / drain_seconds,
        }

    # -- 5. beat memory ---------------------------------------------------------------------

    def beat_memory(self) -> Figures:
        import psutil

        figures: Figures = {}
        for label, count in (("none", 0), ("many", self.size.memory_triggers)):
            with self.svc.schema() as (_schema, url):
                self.svc.reset_redis()
                with self.processes(url, "skip", count, 1.0) as procs:
                    beat = procs.beat()
                    self.wait_ready(procs, beats=1, timeout=300)
                    ready = time.time()
                    process = psutil.Process(beat.pid)
                    cpu = sum(process.cpu_times()[:2])
                    time.sleep(self.size.memory_ticks)
                    cpu = sum(process.cpu_times()[:2]) - cpu
                    figures[f"beat_rss_{label}"] = process.memory_info().rss / 2**20
                    figures[f"beat_start_{label}"] = ready - beat.started
                    figures[f"beat_cpu_{label}"] = 100 * cpu / self.size.memory_ticks
        figures["beat_rss_ratio"] = figures["beat_rss_many"] / figures["beat_rss_none"]
        figures["beat_bytes_per_trigger"] = (
            (figures["beat_rss_many"] - figures["beat_rss_none"]) * 2**20 / self.size.memory_triggers
        )
        return figures

    def run_once(self, progress: Callable[[str], None]) -> Figures:
        figures: Figures = {}
        for name, step in (
            ("skip-poll throughput", self.skip_throughput),
            ("fire latency", self.fire_latency),
            ("fire latency, embedded default", self.embedded_fire_latency),
            ("writes per fire", self.fire_writes),
            ("scale", lambda: self.scale(self.size.scale_triggers, "scale")),
            ("scale, bare Celery", lambda: self.scale(self.size.scale_triggers, "scale", bare=True)),
            ("scale, lighter load", lambda: self.scale(self.size.light_triggers, "light")),
            ("scale, 10x", lambda: self.scale(self.size.large_triggers, "large")),
            ("scale 10x, bare Celery", lambda: self.scale(self.size.large_triggers, "large", bare=True)),
            ("scale 10x, dispatcher on its own queue and worker",
             lambda: self.scale(self.size.large_triggers, "large_dq", layout="dispatch_queue")),
            ("scale 10x, two beats",
             lambda: self.scale(self.size.large_triggers, "large_2b", layout="two_beats")),
            ("per-operation costs", self.operation_costs),
            ("beat memory", self.beat_memory),
            ("recovery from a killed worker", lambda: recovery(self)),
        ):
            started = time.monotonic()
            figures.update(step())
            progress(f"  {name}: {time.monotonic() - started:.1f}s")
        for key in ("scale", "large"):
            if figures.get(f"{key}_share_bare"):
                figures[f"{key}_share_ratio"] = figures[f"{key}_share"] / figures[f"{key}_share_bare"]
        return figures


def _skip() -> Any:
    import cloaca_celery as cloaca

    return cloaca.TriggerResult.skip()


def trigger_name(index: int) -> str:
    """The names ``benchmarks.apps.bench_app`` gives its triggers."""
    return f"bench_{index:05d}"


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile, interpolated between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def lateness_samples(
    entries: list[str], start: float, end: float, interval: float
) -> tuple[list[float], str]:
    """Poll lateness (seconds) of polls that started in ``[start, end)``, and how it was found.

    Polls that carry the dispatcher's ``due`` give ``start - due``. Without it,
    each trigger's starts are compared with its ideal schedule: its first
    start plus whole intervals.
    """
    with_due: list[float] = []
    starts: dict[str, list[float]] = defaultdict(list)
    for entry in entries:
        stamp, value, name = entry.split(" ", 2)
        at = float(stamp)
        if value == "-":
            starts[name].append(at)
        elif start <= at < end:
            with_due.append(float(value))
    if with_due:
        return with_due, "poll start - due"
    from_schedule: list[float] = []
    for times in starts.values():
        times.sort()
        first = times[0]
        for at in times[1:]:
            if start <= at < end:
                slot = round((at - first) / interval)
                from_schedule.append(at - (first + slot * interval))
    return from_schedule, "poll start - (first start + k * interval)"
