"""Deferred writes: in order, off the caller's thread, and never after the task they describe ended."""

from __future__ import annotations

import threading

from cloaca_celery.background import defer_until_end, deferred, task_ends


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
