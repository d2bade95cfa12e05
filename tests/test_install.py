"""install(): the start-up checks that refuse a bad setup, and the beat entries it adds."""

from __future__ import annotations

import time
from pathlib import Path

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


def test_beats_schedule_file_keeps_the_dispatch_tick_and_beat_sleeps_until_it_is_due(tmp_path: Path) -> None:
    import pickle

    from celery._state import _set_current_app, get_current_app
    from celery.beat import PersistentScheduler

    _workflow()

    @cloaca.trigger(workflow="known", poll_interval="2s")
    def steady() -> bool:
        return False

    app = _app(tmp_path)
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
        scheduler = PersistentScheduler(
            app=app, schedule_filename=str(tmp_path / "beat-schedule"), lazy=False
        )
        scheduler.sync()
        entry = scheduler.schedule["cloaca.dispatch"]  # unpickled from the shelve after the sync
        assert isinstance(entry.schedule, DispatchSchedule)
        # Run beat's loop for 0.3 s. Not due yet, beat is told to sleep until the entry is due;
        # with Celery's own schedule it was told 10 ms too little and ticked again at once,
        # thousands of times a second.
        ticks, sent, end = 0, 0, time.monotonic() + 0.3
        while time.monotonic() < end:
            wait = scheduler.tick()
            ticks += 1
            if wait and wait > 0:
                assert 0.03 < wait <= 0.05, wait
                time.sleep(wait)
            else:
                sent += 1
        assert 3 <= sent <= 7 and ticks <= 2 * sent + 2, (ticks, sent)
        scheduler.close()
    finally:
        _set_current_app(previous)
