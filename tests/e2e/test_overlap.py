"""Overlap policies with real processes (issue 14, points 1, 2, 6 and 7).

Each trigger fires the same work (``dedup_key=["key"]``) with a newer context
(``n``) on every poll, 0.3 s apart, into a workflow of a 2 s step and a 0.3 s
step. The steps' own start and end marks (Redis's clock) show what each
policy promises: who runs, in which order, and whether two runs of the work
ever overlap. Each test draws its run as the picture of ``docs/overlap.md``
(written to docs/img only with ``CLOACA_REFRESH_SCREENSHOTS=1``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import pytest

from cloaca_celery import DefaultRunner
from tests.e2e.harness import REPO, CeleryProject, records, wait_until
from tests.e2e.timeline import spans, svg

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

MODULE = "e2e_overlap"


def _alive(client: Any, marks: list[dict[str, Any]]) -> dict[str, float]:
    """The last moment each execution's first step ran (it says so every 20 ms)."""
    ids = sorted({m["execution_id"] for m in marks})
    values = client.mget([f"alive:{i}" for i in ids]) if ids else []
    return {i: float(v) for i, v in zip(ids, values, strict=True) if v is not None}


def _runs(client: Any, trigger: str) -> list[dict[str, Any]]:
    """Each execution: its ``n``, when its first step started and when its last step ended (a
    terminated step: its last sign of life)."""
    marks = records(client, f"marks:{trigger}")
    runs: dict[str, dict[str, Any]] = {}
    for s in spans(marks, _alive(client, marks)):
        run = runs.setdefault(s["execution_id"], {"execution_id": s["execution_id"], "n": s["n"],
                                                   "start": s["start"], "end": s["end"], "steps": {}})
        run["steps"][s["step"]] = s
        run["end"] = s["end"] if s["step"] == "second" or run["end"] is None else run["end"]
    return sorted(runs.values(), key=lambda r: r["start"])


def _redis_now(client: Any) -> float:
    seconds, micros = client.time()
    return float(seconds) + micros / 1e6


def _never_overlapped(runs: list[dict[str, Any]]) -> None:
    for before, after in itertools.pairwise(runs):
        end = before["end"] if before["end"] is not None else max(
            s["end"] or s["start"] for s in before["steps"].values())
        assert after["start"] >= end, f"run n={after['n']} started at {after['start']:.2f} while " \
                                      f"n={before['n']} ran until {end:.2f}"


def _picture(policy: str, client: Any, trigger: str, caption: str) -> None:
    fires = records(client, f"fires:{trigger}")
    marks = records(client, f"marks:{trigger}")
    picture = svg(f'overlap="{policy}": {caption}', fires, marks, _redis_now(client), _alive(client, marks))
    assert picture.startswith("<svg") and "run of n=" in picture
    if os.environ.get("CLOACA_REFRESH_SCREENSHOTS", "") not in ("", "0"):
        (REPO / "docs" / "img" / f"overlap-{policy}.svg").write_text(picture)


def _start(launch: Callable[..., CeleryProject], redis_url: str, store_url: str, policy: str,
           **env: str) -> tuple[CeleryProject, str]:
    trigger = f"ov_{policy}"
    env = {"E2E_REDIS_URL": redis_url, "E2E_DATABASE_URL": store_url, "E2E_TRIGGERS": trigger, **env}
    project = launch(MODULE, **env)
    project.worker(concurrency=4)
    project.beat()
    return project, trigger


def _run_for(client: Any, trigger: str, project: CeleryProject, fires: int) -> None:
    """Fire the same work until ``fires`` fires, then stop; return once no poll can fire any more.

    A poll that read ``go`` just before it was deleted may still be firing (holding its
    fire pending, say) after the test saw nothing active: the polls of one trigger never
    overlap, so once an evaluation has begun after the deletion, every earlier poll has ended.
    """
    client.set(f"go:{trigger}", 1)
    wait_until(lambda: client.llen(f"fires:{trigger}") >= fires, 60, f"{fires} fires", project)
    client.delete(f"go:{trigger}")
    evaluated = int(client.get(f"evals:{trigger}") or 0)
    wait_until(lambda: int(client.get(f"evals:{trigger}") or 0) > evaluated, 60,
               "a poll begun after the last fire", project)


def _settled(runner: DefaultRunner, trigger: str, project: CeleryProject) -> list[dict[str, Any]]:
    """The history once nothing runs or waits any more."""
    def quiet() -> list[dict[str, Any]] | None:
        rows = runner.get_trigger_execution_history(trigger)
        if any(r["status"] in ("queued", "running") for r in rows):
            return None
        return rows if not runner.store.pending_fires(trigger) else None

    try:
        result: list[dict[str, Any]] = wait_until(quiet, 60, "every execution to end, nothing pending",
                                                  project)
    except AssertionError as exc:
        rows = runner.get_trigger_execution_history(trigger)
        state = "\n".join(f"{r['execution_id']} {r['status']} {r.get('error') or ''}" for r in rows)
        pending = runner.store.pending_fires(trigger)
        raise AssertionError(f"{exc}\n----- executions -----\n{state}\n----- pending -----\n{pending}") \
            from None
    return result


def test_skip_drops_the_fires_of_work_that_is_running(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    project, trigger = _start(launch, redis_url, store_url, "skip")
    _run_for(redis_client, trigger, project, 14)
    rows = _settled(runner, trigger, project)
    runs = _runs(redis_client, trigger)
    _never_overlapped(runs)
    assert len(runs) == len(rows) and len(runs) < 14 and {r["status"] for r in rows} == {"succeeded"}
    assert runner.get_trigger_schedule(trigger)["dedup_count"] >= 14 - len(runs) - 1
    _picture("skip", redis_client, trigger, "a fire while the work runs is dropped")


def test_allow_runs_every_fire_at_once(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    project, trigger = _start(launch, redis_url, store_url, "allow")
    _run_for(redis_client, trigger, project, 6)
    rows = _settled(runner, trigger, project)
    runs = _runs(redis_client, trigger)
    assert len(runs) == len(rows) >= 6
    overlapping = sum(1 for a, b in itertools.pairwise(runs) if b["start"] < a["end"])
    assert overlapping >= 3, runs
    _picture("allow", redis_client, trigger, "every fire runs, side by side")


def test_buffer_one_keeps_the_latest_fire_and_runs_it_next(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    project, trigger = _start(launch, redis_url, store_url, "buffer_one")
    redis_client.set(f"go:{trigger}", 1)
    seen_pending: list[int] = []

    def twenty_fires() -> bool:
        seen_pending.append(len(runner.store.pending_fires(trigger)))
        return bool(redis_client.llen(f"fires:{trigger}") >= 20)

    wait_until(twenty_fires, 60, "20 fires", project)
    redis_client.delete(f"go:{trigger}")
    most_pending = max(seen_pending)
    last_fire = records(redis_client, f"fires:{trigger}")[-1]["n"]
    rows = _settled(runner, trigger, project)
    runs = _runs(redis_client, trigger)
    _never_overlapped(runs)
    assert most_pending == 1, "buffer_one keeps at most one pending fire of a work"
    assert [r["n"] for r in runs] == sorted(r["n"] for r in runs)
    assert any(b["n"] > a["n"] + 1 for a, b in itertools.pairwise(runs)), "older pending fires were replaced"
    assert runs[-1]["n"] >= last_fire - 1, "the latest fire ran last"
    fires = {f["n"]: f["t"] for f in records(redis_client, f"fires:{trigger}")}
    for before, after in itertools.pairwise(runs):
        # The run that started next is the newest fire made before the previous run ended.
        newer = [n for n, t in fires.items() if t < before["end"]]
        assert after["n"] == max(newer) or after["n"] > before["n"], (before, after)
        assert after["start"] - before["end"] < 5.0, "the pending fire waited long after the work ended"
    assert {r["status"] for r in rows} == {"succeeded"}
    _picture("buffer_one", redis_client, trigger, "one pending fire, the latest, runs next")


def test_buffer_all_runs_pending_fires_in_order_and_drops_the_oldest_past_max_pending(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    project, trigger = _start(launch, redis_url, store_url, "buffer_all", E2E_MAX_PENDING="3")
    _run_for(redis_client, trigger, project, 12)
    fired = [f["n"] for f in records(redis_client, f"fires:{trigger}")]
    rows = _settled(runner, trigger, project)
    runs = _runs(redis_client, trigger)
    _never_overlapped(runs)
    ran = [r["n"] for r in runs]
    assert ran == sorted(ran), "pending fires run in fire order"
    assert ran[-3:] == fired[-3:], "the newest max_pending fires all ran"
    assert len(ran) < len(fired), "some of the oldest pending fires were dropped"
    assert len(set(ran)) == len(ran), "no fire ran twice"
    assert {r["status"] for r in rows} == {"succeeded"}
    _picture("buffer_all", redis_client, trigger, "pending fires run one after another (max_pending=3)")


def test_cancel_other_revokes_the_running_work_and_starts_the_new_fire_when_it_has_ended(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    project, trigger = _start(launch, redis_url, store_url, "cancel_other", E2E_INTERVAL="1s")
    _run_for(redis_client, trigger, project, 6)
    rows = _settled(runner, trigger, project)
    runs = _runs(redis_client, trigger)
    _never_overlapped(runs)
    statuses = {r["execution_id"]: r["status"] for r in rows}
    cancelled = [r for r in runs if statuses[r["execution_id"]] == "revoked"]
    assert cancelled, "a newer fire cancelled the running work"
    # A cancelled run's first step finished (no terminate), but its second never started.
    assert all("second" not in r["steps"] for r in cancelled), cancelled
    assert statuses[runs[-1]["execution_id"]] == "succeeded"
    _picture("cancel_other", redis_client, trigger,
             "a newer fire revokes the run; its next step never starts; the new run follows")


def test_terminate_other_kills_the_running_step_and_starts_the_new_fire_at_once(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    project, trigger = _start(launch, redis_url, store_url, "terminate_other", E2E_INTERVAL="1s")
    redis_client.set(f"sleep:{trigger}", 4)
    _run_for(redis_client, trigger, project, 4)
    rows = _settled(runner, trigger, project)
    runs = _runs(redis_client, trigger)
    _never_overlapped(runs)
    statuses = {r["execution_id"]: r["status"] for r in rows}
    terminated = [r for r in runs if r["steps"]["first"]["cut"]]
    assert terminated, "a newer fire terminated the running step"
    assert all(statuses[r["execution_id"]] == "revoked" for r in terminated)
    assert statuses[runs[-1]["execution_id"]] == "succeeded"
    _picture("terminate_other", redis_client, trigger,
             "a newer fire kills the running step; the new run starts")


def test_pending_fires_survive_a_restart_of_every_process_and_start_once_each(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, store_url: str,
    runner: DefaultRunner,
) -> None:
    project, trigger = _start(launch, redis_url, store_url, "buffer_all", E2E_MAX_PENDING="100")
    redis_client.set(f"sleep:{trigger}", 4)
    _run_for(redis_client, trigger, project, 5)
    wait_until(lambda: len(runner.store.pending_fires(trigger)) >= 3, 30, "fires pending", project)
    project.stop_all()  # every worker and beat: the pending fires are only in the store now
    pending = [p.context["n"] for p in runner.store.pending_fires(trigger)]
    assert pending == sorted(pending) and pending
    again = launch(MODULE, E2E_REDIS_URL=redis_url, E2E_DATABASE_URL=store_url, E2E_TRIGGERS=trigger)
    again.worker(concurrency=2)
    again.beat()
    redis_client.set(f"sleep:{trigger}", 0.5)
    rows = _settled(runner, trigger, again)
    runs = _runs(redis_client, trigger)
    ran = [r["n"] for r in runs]
    assert set(pending) <= set(ran), (pending, ran)
    assert len(set(ran)) == len(ran), "a pending fire started twice"
    assert ran == sorted(ran)
    _never_overlapped([r for r in runs if r["end"] is not None])
    # The run caught by the stop ends failed (its pool process got the SIGTERM) or lost; the rest succeed.
    unfinished = [r for r in rows if r["status"] != "succeeded"]
    assert len(unfinished) <= 1 and all(r["status"] in ("failed", "lost") for r in unfinished), unfinished
