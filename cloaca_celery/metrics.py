"""``celery -A proj cloaca metrics``: the health counts served to Prometheus (``cloaca-celery[prometheus]``).

Every scrape reads the counts from the store, where every worker process on
every host writes its own rows (:mod:`cloaca_celery.counters`): the sums are
the deployment's, however many processes and hosts count. Counters count
from the minute this server started; a restart of the server is a counter
reset, which Prometheus's ``rate()`` and ``increase()`` handle. Minutes older
than :data:`WINDOW` seconds are not read again: a count written later than
that (a process that could not reach the store for ten minutes) is missed.

Metrics (labels ``trigger``, and ``outcome`` or ``policy``):

* ``cloaca_trigger_polls_total{outcome=skipped|fired|held|error}``
* ``cloaca_trigger_held_total{policy}``: fires held back, by overlap policy
* ``cloaca_trigger_late_polls_total``, ``cloaca_trigger_pending_total``,
  ``cloaca_trigger_cancelled_total``, ``cloaca_trigger_dropped_total``
* ``cloaca_trigger_poll_duration_seconds`` and
  ``cloaca_trigger_fire_latency_seconds``: histograms
* ``cloaca_trigger_last_poll_timestamp_seconds`` and ``cloaca_trigger_unhealthy`` (1 or 0): gauges
* ``cloaca_store_up``: 1 if the last scrape could read the store
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .counters import BUCKETS, HELD_POLICIES, Durations, HealthCounts, minute_of
from .health import assess_all, counted_since, last_polled, slack_of
from .settings import Settings
from .store import Store

logger = logging.getLogger("cloaca_celery.metrics")

WINDOW = 600.0
"""Seconds of minutes read again at every scrape (a process writes a minute's counts within its flush
interval of the minute's end); older minutes are kept in memory as they were last read."""


class HealthTotals:
    """Each trigger's counts since ``started``, read from the store a window of minutes at a time."""

    def __init__(self, store: Store, started: float) -> None:
        self.store = store
        self.started = minute_of(started)
        self._settled: dict[str, HealthCounts] = {}
        self._recent: dict[tuple[str, datetime], HealthCounts] = {}
        self._lock = threading.Lock()

    def read(self, now: float) -> dict[str, HealthCounts]:
        horizon = max(self.started, minute_of(now - WINDOW))
        rows = self.store.health(None, horizon)
        with self._lock:
            for key in [key for key in self._recent if key[1] < horizon]:
                row = self._recent.pop(key)
                self._settled.setdefault(key[0], HealthCounts(key[0], self.started)).add(row)
            for row in rows:
                self._recent[(row.trigger_name, row.minute)] = row
            totals = {name: counts.copy() for name, counts in self._settled.items()}
            for (name, _), row in self._recent.items():
                totals.setdefault(name, HealthCounts(name, self.started)).add(row)
        return totals


def _histogram(name: str, documentation: str, totals: dict[str, HealthCounts], which: str) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=["trigger"], unit="seconds")
    for trigger, counts in sorted(totals.items()):
        durations: Durations = getattr(counts, which)
        cumulative, buckets = 0, []
        for bound, count in zip(BUCKETS, durations.buckets[:-1], strict=True):
            cumulative += count
            buckets.append((repr(bound), float(cumulative)))
        buckets.append(("+Inf", float(durations.count)))
        family.add_metric([trigger], buckets, durations.total)
    return family


class HealthCollector(Collector):
    """A ``prometheus_client`` collector of the store's health counts."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.totals = HealthTotals(store, store.now())

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("cloaca_store_up", "1 if the last scrape could read cloaca's store")
        try:
            now = self.store.now()
            totals = self.totals.read(now)
            schedules = [s for s in self.store.list_schedules() if s["registered"]]
            slack = slack_of(self.settings.health_flush_interval)
            at = datetime.fromtimestamp(now, tz=timezone.utc)
            last_polls = self.store.last_polls(counted_since(schedules, at, slack))
        except Exception as exc:  # noqa: BLE001 - a scrape reports the outage instead of failing
            logger.warning("metrics: the store could not be read: %s", " ".join(str(exc).split())[:300])
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        for schedule in schedules:
            name = schedule["trigger_name"]
            totals.setdefault(name, HealthCounts(name, self.totals.started))
        polls = CounterMetricFamily("cloaca_trigger_polls", "Polls that ran, by outcome",
                                    labels=["trigger", "outcome"])
        held = CounterMetricFamily("cloaca_trigger_held", "Fires held back by the overlap policy, by policy",
                                   labels=["trigger", "policy"])
        others = {
            "late": CounterMetricFamily("cloaca_trigger_late_polls", "Polls dropped unrun as late",
                                        labels=["trigger"]),
            "pending": CounterMetricFamily("cloaca_trigger_pending", "Fires that became pending",
                                           labels=["trigger"]),
            "cancelled": CounterMetricFamily("cloaca_trigger_cancelled",
                                             "Executions revoked by cancel_other / terminate_other",
                                             labels=["trigger"]),
            "dropped": CounterMetricFamily("cloaca_trigger_dropped",
                                           "Pending fires dropped past max_pending", labels=["trigger"]),
        }
        for trigger, counts in sorted(totals.items()):
            for outcome, value in (("skipped", counts.skips), ("fired", counts.fires),
                                   ("held", sum(counts.held.values())), ("error", counts.errors)):
                polls.add_metric([trigger, outcome], float(value))
            for policy in HELD_POLICIES:
                held.add_metric([trigger, policy], float(counts.held[policy]))
            for key, family in others.items():
                family.add_metric([trigger], float(getattr(counts, key)))
        yield polls
        yield held
        yield from others.values()
        yield _histogram("cloaca_trigger_poll_duration", "How long polls took", totals, "poll_seconds")
        yield _histogram("cloaca_trigger_fire_latency", "From a fire to its first step's start", totals,
                         "latency_seconds")
        last = GaugeMetricFamily("cloaca_trigger_last_poll_timestamp_seconds",
                                 "When the trigger was last polled (epoch seconds)", labels=["trigger"])
        for schedule in schedules:
            polled = last_polled(schedule, last_polls.get(schedule["trigger_name"]))
            if polled is not None:
                last.add_metric([schedule["trigger_name"]], polled.timestamp())
        yield last
        unhealthy = GaugeMetricFamily(
            "cloaca_trigger_unhealthy", "1 if the trigger is unhealthy (see docs/health.md)",
            labels=["trigger"],
        )
        for health in assess_all(schedules, last_polls, at, slack):
            unhealthy.add_metric([health.trigger_name], 1.0 if health.status == "unhealthy" else 0.0)
        yield unhealthy


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        logger.debug("metrics: " + format, *args)


def registry_of(store: Store, settings: Settings) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HealthCollector(store, settings))
    return registry


def serve(store: Store, settings: Settings, bind: str, port: int) -> WSGIServer:
    """A WSGI server of ``/metrics`` (not yet serving: call ``serve_forever``)."""
    app = make_wsgi_app(registry_of(store, settings))
    return make_server(bind, port, app, handler_class=_QuietHandler)


__all__ = ["WINDOW", "HealthCollector", "HealthTotals", "registry_of", "serve"]
