"""An unreachable store: polls, dispatch and sweep each log one clear line and go on."""

from __future__ import annotations

import logging

import pytest
from celery import Celery

import cloaca_celery as cloaca
from cloaca_celery.builtin_tasks import COMPLETE_TASK, FAILED_TASK, POLL_TASK
from cloaca_celery.dispatch import dispatch_due
from cloaca_celery.firing import Firer
from cloaca_celery.installation import get_installation
from cloaca_celery.sweep import sweep

UNREACHABLE = "postgresql://cloaca@127.0.0.1:9/nowhere?connect_timeout=2"


@cloaca.task(id="failures_step")
def failures_step(context: cloaca.Context) -> None:
    return None


@pytest.fixture
def app() -> Celery:
    with cloaca.WorkflowBuilder("failures_workflow") as builder:
        builder.add_task(failures_step)

    @cloaca.trigger(workflow="failures_workflow", poll_interval="1s")
    def failures_trigger() -> bool:
        return True

    app = Celery("failures", broker="memory://", set_as_current=False)
    cloaca.install(app, database_url=UNREACHABLE)
    return app


def test_a_poll_reports_the_store_in_one_line(app: Celery, caplog: pytest.LogCaptureFixture) -> None:
    installation = get_installation(app)
    from cloaca_celery.builtin_tasks import COMPLETE_TASK, FAILED_TASK
    from cloaca_celery.clock import StoreClock
    from cloaca_celery.firing import Firer
    from cloaca_celery.polling import Poller
    from cloaca_celery.sqlstore import SqlStore

    store = SqlStore(UNREACHABLE)
    clock = StoreClock(store.now)
    poller = Poller(installation.settings, store, clock,
                    Firer(app, installation.settings, store, clock, COMPLETE_TASK, FAILED_TASK))
    with caplog.at_level(logging.WARNING):
        report = poller.poll("failures_trigger")
    assert report.status == "not_polled" and report.detail == "store unreachable"
    lines = [r for r in caplog.records if r.name.startswith("cloaca_celery")]
    assert len(lines) == 1
    assert lines[0].getMessage().startswith("failures_trigger: not polled: the store is unreachable: ")
    assert lines[0].exc_info is None and "\n" not in lines[0].getMessage()


def test_dispatch_and_sweep_log_once_per_interval(app: Celery, caplog: pytest.LogCaptureFixture) -> None:
    from cloaca_celery import logs
    from cloaca_celery.sqlstore import SqlStore

    logs._last_logged.clear()
    from cloaca_celery.clock import StoreClock

    store = SqlStore(UNREACHABLE)
    clock = StoreClock(store.now)
    settings = get_installation(app).settings
    firer = Firer(app, settings, store, clock, COMPLETE_TASK, FAILED_TASK)
    with caplog.at_level(logging.WARNING):
        assert dispatch_due(app, settings, store, clock, POLL_TASK, {}) == 0
        assert dispatch_due(app, settings, store, clock, POLL_TASK, {}) == 0
        assert sweep(app, settings, store, clock, firer) == 0
        assert sweep(app, settings, store, clock, firer) == 0
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("cloaca_celery")]
    assert len(messages) == 2, messages
    assert messages[0].startswith("dispatch: the store is unreachable (OperationalError")
    assert messages[1].startswith("sweep: the store is unreachable (OperationalError")
    assert all(r.exc_info is None for r in caplog.records)
