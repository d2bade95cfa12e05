"""The shop's triggers and workflows: the three patterns of cloaca's trigger page.

``cloaca.install(app)`` imports every app's ``triggers.py`` in each worker and beat, the way
Celery's ``autodiscover_tasks()`` imports ``tasks.py``.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from django.conf import settings

import cloaca_celery as cloaca

# -- 1. File watcher: one workflow per file, deduplicated by the file's hash ------------


def inbox() -> Path:
    folder = Path(settings.SHOP_INBOX)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@cloaca.task(id="import_orders")
def import_orders(context: cloaca.Context) -> cloaca.Context:
    path = inbox() / context["filename"]
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    context["orders"] = len(lines)
    return context


@cloaca.task(id="archive_file", dependencies=["import_orders"])
def archive_file(context: cloaca.Context) -> cloaca.Context:
    archive = Path(settings.SHOP_ARCHIVE)
    archive.mkdir(parents=True, exist_ok=True)
    shutil.move(str(inbox() / context["filename"]), archive / context["filename"])
    context["archived"] = True
    return context


with cloaca.WorkflowBuilder("file_processor") as builder:
    builder.description("Import the orders of a dropped CSV file, then archive it")
    builder.add_task(import_orders)
    builder.add_task(archive_file)


@cloaca.trigger(workflow="file_processor", name="file_watcher", poll_interval="500ms")
def file_watcher() -> cloaca.TriggerResult:
    """Fire for the oldest file in the inbox; while it is processed, its hash is claimed,
    so the polls that see it again are deduplicated instead of importing it twice."""
    for path in sorted(inbox().glob("*.csv")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return cloaca.TriggerResult.fire({"filename": path.name, "file_hash": digest})
    return cloaca.TriggerResult.skip()


# -- 2. Threshold: every fire runs (allow_concurrent=True) ---------------------------------


def pending_orders() -> int:
    """Stand-in for a real queue-depth check (a broker API, a SELECT COUNT)."""
    marker = inbox().parent / "queue_depth"
    return int(marker.read_text()) if marker.exists() else 0


@cloaca.task(id="scale_up")
def scale_up(context: cloaca.Context) -> cloaca.Context:
    context["workers_wanted"] = 1 + context["queue_depth"] // 100
    return context


with cloaca.WorkflowBuilder("scale_up") as builder:
    builder.add_task(scale_up)


@cloaca.trigger(workflow="scale_up", poll_interval="10s", allow_concurrent=True)
def queue_depth_trigger() -> cloaca.TriggerResult:
    depth = pending_orders()
    if depth > 100:
        return cloaca.TriggerResult.fire({"queue_depth": depth, "action": "scale_up"})
    return cloaca.TriggerResult.skip()


# -- 3. Health check: fire after 3 failures in a row, counted in persistent state ----------


def payment_api_healthy() -> bool:
    """Stand-in for an HTTP health check."""
    return not (inbox().parent / "payment_api_down").exists()


@cloaca.task(id="restart_payment_api")
def restart_payment_api(context: cloaca.Context) -> cloaca.Context:
    context["restarted"] = True
    return context


with cloaca.WorkflowBuilder("service_recovery") as builder:
    builder.add_task(restart_payment_api)


@cloaca.trigger(workflow="service_recovery", poll_interval="1s")
def health_check(state: dict[str, int]) -> cloaca.TriggerResult:
    """``state`` lives in the store, so the count survives whichever worker runs each poll."""
    if payment_api_healthy():
        state["failures"] = 0
        return cloaca.TriggerResult.skip()
    state["failures"] = state.get("failures", 0) + 1
    if state["failures"] >= 3:
        state["failures"] = 0
        return cloaca.TriggerResult.fire({"service": "payment_api", "consecutive_failures": 3})
    return cloaca.TriggerResult.skip()
