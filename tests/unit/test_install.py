"""install(): the start-up checks that refuse a bad setup, and the beat entries it adds."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

import cloaca_celery as cloaca
from cloaca_celery.dispatch import DispatchSchedule
from cloaca_celery.installation import get_installation


def _app(tmp_path: Path, **conf: object) -> Celery:
    app = Celery("checks", broker="memory://", set_as_current=False)
    app.conf.update(**conf)
    cloaca.install(app, database_url=f"sqlite:///{tmp_path / 'store.db'}")
    return app


@cloaca.task(id="install_only_step")
def only_step(context: cloaca.Context) -> None:
    return None


def _workflow() -> None:
    with cloaca.WorkflowBuilder("known") as builder:
        builder.add_task(only_step)


def test_a_sound_setup_has_no_problems_and_starts(tmp_path: Path) -> None:
    _workflow()

    @cloaca.trigger(workflow="known", poll_interval="1s")
    def fine() -> bool:
        return False

    app = _app(tmp_path)
    installation = get_installation(app)
    assert installation.check() == []
    installation.start("worker")
    assert installation.store.get_schedule("fine")["enabled"] is True


@pytest.mark.parametrize(
    ("conf", "needle"),
    [
        ({"task_serializer": "pickle"}, "task_serializer='pickle'"),
        ({"result_serializer": "pickle"}, "result_serializer='pickle'"),
        ({"accept_content": ["json", "pickle"]}, "accept_content"),
    ],
)
def test_pickle_is_refused_at_start_up(tmp_path: Path, conf: dict[str, object], needle: str) -> None:
    app = _app(tmp_path, **conf)
    installation = get_installation(app)
    problems = installation.check()
    assert len(problems) == 1 and needle in problems[0] and "json" in problems[0]
    with pytest.raises(SystemExit, match="worker not started"):
        installation.start("worker")


def test_unknown_workflow_is_one_clear_problem(tmp_path: Path) -> None:
    @cloaca.trigger(workflow="nowhere", poll_interval="1s")
    def lost_trigger() -> bool:
        return False

    app = _app(tmp_path)
    problems = get_installation(app).check()
    assert len(problems) == 1
    assert "trigger 'lost_trigger'" in problems[0] and "workflow 'nowhere'" in problems[0]
    with pytest.raises(SystemExit, match="beat not started"):
        get_installation(app).start("beat")


def test_a_bad_setting_stops_start_up_naming_it(tmp_path: Path) -> None:
    app = Celery("bad", broker="memory://", set_as_current=False)
    cloaca.install(app, database_url=f"sqlite:///{tmp_path / 's.db'}", poll_time_limit="soon")
    with pytest.raises(SystemExit, match="cloaca_poll_time_limit"):
        get_installation(app).start("worker")


def test_unknown_install_option_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown option.*poll_timeout"):
        cloaca.install(Celery("x", set_as_current=False), poll_timeout="1s")


def test_beat_gets_one_dispatch_entry_and_one_sweep_entry(tmp_path: Path) -> None:
    _workflow()

    @cloaca.trigger(workflow="known", poll_interval="100ms")
    def quick() -> bool:
        return False

    app = _app(tmp_path)
    entries = app.conf.beat_schedule
    assert set(entries) == {"cloaca.dispatch", "cloaca.sweep"}
    tick = entries["cloaca.dispatch"]["schedule"]
    assert isinstance(tick, DispatchSchedule)
    assert tick.run_every.total_seconds() == pytest.approx(0.05)
    assert entries["cloaca.dispatch"]["options"]["expires"] > 0
    assert {"cloaca.poll", "cloaca.dispatch", "cloaca.sweep", "cloaca.complete", "cloaca.failed"} <= set(
        app.tasks
    )
    other = Celery("other", set_as_current=False)
    assert "cloaca.poll" not in other.tasks


class _BeatClock:
    """Beat's clock in a test: it moves only when beat sleeps, by what beat asked (at least).

    Installed as ``app.now``, which every schedule and ``Scheduler._when`` read,
    so beat's loop runs the same on any machine, however loaded.
    """

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += timedelta(microseconds=math.ceil(seconds * 1_000_000))  # a sleep is never short


def test_beats_schedule_file_keeps_the_dispatch_tick_and_beat_sleeps_until_it_is_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle

    from celery._state import _set_current_app, get_current_app
    from celery.beat import PersistentScheduler, ScheduleEntry

    _workflow()

    @cloaca.trigger(workflow="known", poll_interval="2s")
    def steady() -> bool:
        return False

    app = _app(tmp_path)
    clock = _BeatClock(app.now())
    monkeypatch.setattr(app, "now", clock)
    sent: list[tuple[str, datetime]] = []

    class RecordingScheduler(PersistentScheduler):
        def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
            sent.append((entry.name, clock()))
            super().apply_entry(entry, producer=producer)

    previous = get_current_app()
    _set_current_app(app)  # as in a beat process: the schedule file is read back against it
    try:
        copy = pickle.loads(pickle.dumps(app.conf.beat_schedule["cloaca.dispatch"]["schedule"]))
        assert isinstance(copy, DispatchSchedule) and copy.run_every.total_seconds() == pytest.approx(0.1)

        @cloaca.trigger(workflow="known", poll_interval="1s")
        def brisk() -> bool:
            return False

        # The copy still follows the registry (a trigger imported after install): 2s/20 -> 1s/20.
        assert copy.run_every.total_seconds() == pytest.approx(0.05)
        scheduler = RecordingScheduler(app=app, schedule_filename=str(tmp_path / "beat-schedule"), lazy=False)
        try:
            scheduler.sync()
            entry = scheduler.schedule["cloaca.dispatch"]  # unpickled from the shelve after the sync
            assert isinstance(entry.schedule, DispatchSchedule)
            # Beat's own loop (celery.beat.Service.start) for one second of its clock, before the
            # 5 s sweep is due. With Celery's schedule beat was told 10 ms too little: woken before
            # the entry was due, it ticked again at once, thousands of times a second.
            start = clock()
            end = start + timedelta(seconds=1)
            woken = False
            for _ in range(1000):  # a beat that spins never moves its clock: this bounds the loop
                if clock() >= end:
                    break
                before = len(sent)
                wait = scheduler.tick()
                if woken:
                    assert len(sent) == before + 1, f"woken {clock()}, nothing was due: beat slept too little"
                if wait and wait > 0:
                    clock.sleep(wait)
                    woken = True
                else:
                    assert len(sent) == before + 1, f"tick returned {wait} with nothing due: beat spins"
                    woken = False
            assert clock() >= end, "beat's clock stood still"
        finally:
            scheduler.close()
    finally:
        _set_current_app(previous)
    assert {name for name, _ in sent} == {"cloaca.dispatch"}
    # Each tick sent when due, not later: 50 ms apart from the schedule file's last run on.
    offsets = [(at - start).total_seconds() for _, at in sent]
    assert offsets == pytest.approx([0.05 * n for n in range(1, 20)], abs=1e-4), offsets
