"""Deferred writes: in order, off the caller's thread, and never after the task they describe ended."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from cloaca_celery.background import defer_until_end, deferred, task_ends
from cloaca_celery.steps import step_ends


def _drain() -> None:
    done = threading.Event()
    deferred.defer(done.set, "test: drain")
    assert done.wait(5), "the deferred thread did not run"


def test_a_write_deferred_until_the_end_runs_while_the_task_runs() -> None:
    written: list[str] = []
    defer_until_end("task-1", lambda: written.append("STARTED"), "test")
    _drain()
    task_ends("task-1")
    assert written == ["STARTED"]


def test_a_write_still_pending_when_its_task_ends_is_dropped() -> None:
    written: list[str] = []
    release = threading.Event()
    deferred.defer(lambda: release.wait(5), "test: a slow write ahead in the queue")
    defer_until_end("task-2", lambda: written.append("STARTED"), "test")
    task_ends("task-2")  # the task ended (Celery is about to store SUCCESS) first
    release.set()
    _drain()
    assert written == []


def test_the_end_waits_for_a_write_being_made() -> None:
    events: list[str] = []
    writing, finish = threading.Event(), threading.Event()

    def slow_write() -> None:
        writing.set()
        finish.wait(5)
        events.append("STARTED stored")

    defer_until_end("task-3", slow_write, "test")
    assert writing.wait(5)
    ender = threading.Thread(target=lambda: (task_ends("task-3"), events.append("task ended")))
    ender.start()
    ender.join(0.2)
    assert ender.is_alive(), "task_ends returned while the STARTED write was in flight"
    finish.set()
    ender.join(5)
    assert events == ["STARTED stored", "task ended"]
    task_ends("task-3")  # again (task_postrun after the step's own call): harmless


def test_drain_waits_for_every_write_deferred_before_it() -> None:
    written: list[str] = []
    release = threading.Event()
    deferred.defer(lambda: (release.wait(5), written.append("slow")), "test: slow")
    threading.Timer(0.2, release.set).start()
    assert deferred.drain(10)
    assert written == ["slow"]


def test_a_step_whose_process_exits_records_its_end_before_step_ends_returns() -> None:
    """A pool process sent SIGTERM (``revoke(terminate=True)``) exits right after its step: its end,
    and the pending fire that end starts, must not be left to a thread the exit would cut."""
    events: list[str] = []

    class Store:
        def end_step(self, execution_id: str, task_id: str, *_: object) -> bool:
            events.append(f"end {task_id}")
            return True

    runtime = SimpleNamespace(
        store=Store(), clock=SimpleNamespace(now=time.time),
        leases=SimpleNamespace(release=lambda _execution_id: None),
        settings=SimpleNamespace(lease=30.0, queued_timeout=600.0),
        after_end=lambda execution_id, trigger: events.append(f"after_end {execution_id}"),
    )
    release = threading.Event()
    deferred.defer(lambda: (release.wait(5), events.append("an earlier write")), "test: earlier")
    threading.Timer(0.2, release.set).start()
    step_ends(runtime, "e1", "t", "e1-1", exiting=True)  # type: ignore[arg-type]
    assert events == ["an earlier write", "end e1-1", "after_end e1"]
