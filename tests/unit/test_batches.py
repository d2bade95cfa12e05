"""Forming batches of polls, and what a batch keeps per entry (cloaca_celery/batches.py)."""

from __future__ import annotations

import threading
import time

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from cloaca_celery import ConfigurationError, TriggerResult, trigger
from cloaca_celery.batches import (
    FIRING_SHARE,
    HANDBACK_AFTER,
    SLOW_POLL,
    BatchRun,
    Entry,
    PollMeasures,
    entries_from_message,
    entries_message,
    entry_time_limit,
    form_batches,
)
from cloaca_celery.dispatch import send_batch
from cloaca_celery.polling import PollReport
from cloaca_celery.slots import Slot
from cloaca_celery.triggers import triggers

T0 = 1_764_331_234.5


def entry(name: str, start_by: float) -> Entry:
    return (name, Slot(due=T0, next_due=T0 + 1, start_by=start_by, lease_by=T0 + 0.95))


def test_cheap_polls_go_in_batches_of_at_most_size_the_earliest_start_by_first() -> None:
    polls = [entry(f"c{i}", T0 + 0.5 - i / 100) for i in range(7)] + [entry("slow", T0 + 0.1)]
    alone, batches = form_batches(polls, 3, cheap=lambda name: name != "slow")

    assert [name for name, _ in alone] == ["slow", "c0"]  # a batch of one goes alone
    assert [[name for name, _ in batch] for batch in batches] == [["c6", "c5", "c4"], ["c3", "c2", "c1"]]


def test_batch_size_one_sends_every_poll_alone() -> None:
    polls = [entry(f"c{i}", T0 + 0.5) for i in range(4)]
    assert form_batches(polls, 1, cheap=lambda name: True) == (polls, [])


def test_a_batch_travels_as_json_and_comes_back_the_same() -> None:
    polls = [entry("a", T0 + 0.5), entry("b", T0 + 0.4)]
    assert entries_from_message(entries_message(polls)) == polls


def _define(name: str, batch: bool | None = None) -> None:
    trigger(workflow="wf", name=name, poll_interval="1s", batch=batch)(lambda: TriggerResult.skip())


def test_measured_slow_or_often_firing_triggers_are_sent_alone_and_the_option_decides_first() -> None:
    for name, batch in (("new", None), ("slow", None), ("firing", None), ("forced", True), ("alone", False)):
        _define(name, batch)
    measures = PollMeasures()
    for _ in range(5):
        measures.record("slow", SLOW_POLL * 4, PollReport("slow", "skipped"))
        measures.record("firing", 0.001, PollReport("firing", "fired"))
        measures.record("forced", SLOW_POLL * 4, PollReport("forced", "fired"))

    decided = {name: measures.batchable(triggers.get(name))
               for name in ("new", "slow", "firing", "forced", "alone")}

    assert decided == {"new": True, "slow": False, "firing": False, "forced": True, "alone": False}
    for _ in range(20):  # cheap again: back in batches as the moving averages come down
        measures.record("slow", 0.001, PollReport("slow", "skipped"))
        measures.record("firing", 0.001, PollReport("firing", "skipped"))
    assert measures.batchable(triggers.get("slow")) and measures.batchable(triggers.get("firing"))
    assert FIRING_SHARE < 1


def test_a_timed_out_poll_marks_its_trigger_slow() -> None:
    _define("hangs")
    measures = PollMeasures()
    timed_out = PollReport("hangs", "error", "timed out after 2s (setting cloaca_poll_time_limit)")
    measures.record("hangs", 0.0, timed_out)
    assert not measures.batchable(triggers.get("hangs"))


def test_batch_option_must_be_a_bool_or_none() -> None:
    with pytest.raises(ConfigurationError, match="'odd': batch must be True, False or None"):
        trigger(workflow="wf", name="odd", batch="yes")(lambda: True)  # type: ignore[arg-type]


def test_handing_back_gives_the_entries_not_yet_begun_once() -> None:
    polls = [entry(f"c{i}", T0 + 0.5) for i in range(4)]
    handed: list[list[Entry]] = []
    run = BatchRun(polls, handed.append)
    assert run.take() == polls[0]
    assert run.take() == polls[1]

    assert run.give_back("c1") is True

    assert handed == [polls[2:]]
    assert run.take() is None
    run.give_back("c1")
    assert handed == [polls[2:]]  # nothing left to hand back twice


def test_an_entry_time_limit_interrupts_a_hang_in_the_main_thread_and_is_disarmed_after() -> None:
    began = time.monotonic()
    with pytest.raises(SoftTimeLimitExceeded), entry_time_limit(0.2) as armed:
        assert armed
        time.sleep(5)
    assert time.monotonic() - began < 4
    with entry_time_limit(0.05):
        pass
    time.sleep(0.1)  # disarmed: no alarm arrives after the block


def test_an_entry_time_limit_is_not_armed_outside_the_main_thread() -> None:
    seen: list[bool] = []

    def run() -> None:
        with entry_time_limit(0.05) as armed:
            seen.append(armed)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [False]


def test_a_batch_message_s_own_time_limits_come_after_every_entry_s() -> None:
    """Celery's limits on a batch message are a backstop: an entry's own timer cuts a hung trigger
    first. With the same soft limit, a batch whose first entry hangs was interrupted twice at
    once, the second time while it recorded the first (seen as an error without its poll's end)."""
    sent: list[dict[str, object]] = []

    class App:
        def send_task(self, name: str, **options: object) -> None:
            sent.append({"name": name, **options})

    entries = [entry(f"t{i}", T0 + 1) for i in range(3)]
    options = {"soft_time_limit": 1.5, "time_limit": 6.5, "queue": "polls"}
    send_batch(App(), "cloaca.poll_batch", entries, options, T0)  # type: ignore[arg-type]
    (message,) = sent
    assert message["queue"] == "polls" and options["soft_time_limit"] == 1.5  # the caller's options kept
    assert message["soft_time_limit"] >= 1.5 + 3 * HANDBACK_AFTER + 0.5  # type: ignore[operator]
    assert message["time_limit"] >= 6.5 + 3 * HANDBACK_AFTER + 0.5  # type: ignore[operator]
