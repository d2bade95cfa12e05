"""The ``Store`` contract (cloaca_celery/store.py), checked against SqlStore on every backend.

Every test runs on SQLite, PostgreSQL and MariaDB (see ``conftest.py``).
Scheduling times are epoch seconds passed explicitly as ``now``; nothing here
waits on the clock. ``T0`` is a realistic epoch time (with a fractional part)
rather than a round number, so that a backend that loses precision shows it.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
from sqlalchemy import create_engine, delete, event, select, text, update
from sqlalchemy.engine import make_url

from cloaca_celery.sqlstore import SqlStore, claims, executions, steps
from cloaca_celery.store import (
    FINAL_STATUSES,
    PAUSE_FIELDS,
    STEP_FIELDS,
    DuePoll,
    NewExecution,
    PollLease,
    PollOutcome,
    PollRefusal,
    Store,
    TriggerSpec,
)
from tests.contract.conftest import Backend, new_name
from tests.support.services import MARIADB_URL, POSTGRES_URL, need_mariadb

T0 = 1_764_331_234.5  # 2025-11-28T12:00:34.5Z
D0 = datetime(2025, 11, 28, 12, 0, 34, tzinfo=timezone.utc)
LEASE = 60.0
UTC = timezone.utc
QUEUED = 600.0
"""The deadline of a fire, and of an execution whose steps all ended, after ``now`` (its next step waits)."""
STEP_LEASE = 30.0
"""A step's lease in these tests: ``start_step(..., now, now + STEP_LEASE)``."""
FAR = T0 + 10**7
"""A sweep at ``FAR`` sees every active execution."""

T = TypeVar("T")


def spec(name: str, interval: float = 5.0, workflow: str = "wf", concurrent: bool = False) -> TriggerSpec:
    return TriggerSpec(name, workflow, poll_interval=interval, allow_concurrent=concurrent)


def utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def digest(context: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(context, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def new_execution(
    trigger: str = "orders", context: dict[str, Any] | None = None, started_at: datetime = D0,
    execution_id: str | None = None, context_hash: str | None = None, workflow: str = "wf",
) -> NewExecution:
    context = {"order": 1} if context is None else context
    execution_id = execution_id or str(uuid.uuid4())
    return NewExecution(
        execution_id=execution_id, trigger_name=trigger, workflow=workflow, context=context,
        context_hash=context_hash or digest(context), task_ids=[f"{execution_id}-1", execution_id],
        started_at=started_at,
    )


def claimed(store: SqlStore, now: float, limit: int = 100) -> list[str]:
    return sorted(due.trigger_name for due in store.claim_due(now, limit))


def lease_of(store: SqlStore, name: str, now: float = T0, token: str = "tok-1") -> PollLease:
    taken = store.begin_poll(name, now, LEASE, token)
    assert isinstance(taken, PollLease), taken
    return taken


def fired(
    store: SqlStore, execution: NewExecution, now: float = T0, claim: bool = True,
    deadline: float | None = None,
) -> bool:
    """``record_fire`` as the engine calls it: the deadline is ``now + QUEUED`` unless given."""
    deadline = now + QUEUED if deadline is None else deadline
    return store.record_fire(execution, claim=claim, now=now, deadline=deadline)


def in_threads(count: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(i)`` in ``count`` threads released together by a barrier; re-raise any failure."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)
        finally:
            from django.db import connections  # a thread's Django connection dies with the thread

            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


def ids_of(rows: list[dict[str, Any]]) -> list[str]:
    return [row["execution_id"] for row in rows]


def assert_utc(value: object) -> None:
    assert isinstance(value, datetime), value
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0), value


def test_sqlstore_is_a_store(store: SqlStore) -> None:
    assert isinstance(store, Store)


# -- schedules: sync ----------------------------------------------------------------


def test_sync_creates_enabled_rows(store: SqlStore) -> None:
    store.sync_triggers([spec("orders", 5.0, "ship"), spec("files", 60.0, "ingest", True)], T0)

    rows = {row["trigger_name"]: row for row in store.list_schedules()}
    assert set(rows) == {"orders", "files"}
    orders = rows["orders"]
    assert orders == store.get_schedule("orders")
    assert (orders["workflow"], orders["poll_interval"], orders["allow_concurrent"]) == ("ship", 5.0, False)
    assert orders["enabled"] is True
    assert orders["registered"] is True
    assert orders["last_poll_at"] is None
    assert orders["last_fire_at"] is None
    assert orders["last_error"] is None
    assert orders["consecutive_errors"] == 0
    assert orders["dedup_count"] == 0
    assert orders["state"] == {}
    assert isinstance(orders["poll_interval"], float)
    assert (rows["files"]["workflow"], rows["files"]["poll_interval"]) == ("ingest", 60.0)
    assert rows["files"]["allow_concurrent"] is True


def test_sync_twice_keeps_one_row_per_trigger(store: SqlStore) -> None:
    store.sync_triggers([spec("orders")], T0)
    store.sync_triggers([spec("orders")], T0 + 1)
    assert [row["trigger_name"] for row in store.list_schedules()] == ["orders"]


def test_sync_refreshes_changed_triggers(store: SqlStore) -> None:
    store.sync_triggers([spec("orders", 5.0, "ship")], T0)
    store.sync_triggers([spec("orders", 30.0, "ship_v2", concurrent=True)], T0 + 1)
    row = store.get_schedule("orders")
    assert (row["workflow"], row["poll_interval"], row["allow_concurrent"]) == ("ship_v2", 30.0, True)


def test_sync_keeps_the_operators_enabled_false(store: SqlStore) -> None:
    store.sync_triggers([spec("orders", 5.0)], T0)
    store.set_enabled("orders", False)

    store.sync_triggers([spec("orders", 5.0)], T0 + 1)
    assert store.get_schedule("orders")["enabled"] is False
    store.sync_triggers([spec("orders", 10.0, "changed")], T0 + 2)
    assert store.get_schedule("orders")["enabled"] is False
    assert claimed(store, T0 + 100) == []


def test_sync_with_prune_unregisters_missing_triggers(store: SqlStore) -> None:
    store.sync_triggers([spec("kept"), spec("gone")], T0)
    store.sync_triggers([spec("kept")], T0, prune=True)

    assert store.get_schedule("gone")["registered"] is False
    assert store.get_schedule("kept")["registered"] is True
    assert store.get_schedule("gone")["enabled"] is True  # unregistered is not the operator's switch

    store.sync_triggers([spec("kept"), spec("gone")], T0 + 1, prune=True)
    assert store.get_schedule("gone")["registered"] is True


def test_sync_without_prune_leaves_other_triggers_alone(store: SqlStore) -> None:
    store.sync_triggers([spec("kept"), spec("other")], T0)
    store.sync_triggers([spec("kept")], T0, prune=False)
    assert store.get_schedule("other")["registered"] is True


def test_claim_due_skips_unregistered_triggers(store: SqlStore) -> None:
    store.sync_triggers([spec("kept"), spec("gone"), spec("other")], T0)
    store.sync_triggers([spec("kept"), spec("other")], T0, prune=False)
    store.sync_triggers([spec("kept")], T0, prune=True)
    assert claimed(store, T0) == ["kept"]

    store.sync_triggers([spec("kept"), spec("gone")], T0 + 1, prune=False)  # registered again
    assert claimed(store, T0 + 1) == ["gone"]


def test_concurrent_sync_of_the_same_triggers(backend: Backend, store: SqlStore) -> None:
    """Workers and beats start together: each syncs the same triggers, none fails."""
    specs = [spec(f"t{i:02d}") for i in range(10)]
    stores = [backend.store() for _ in range(4)]
    in_threads(4, lambda i: stores[i].sync_triggers(specs, T0))
    assert [row["trigger_name"] for row in store.list_schedules()] == [s.name for s in specs]


@pytest.mark.parametrize("interval", [0.1, 1.5, 3600.0, 86400.25])
def test_poll_interval_round_trips(store: SqlStore, interval: float) -> None:
    store.sync_triggers([spec("orders", interval)], T0)
    assert store.get_schedule("orders")["poll_interval"] == interval
    assert store.claim_due(T0, 10) == [DuePoll("orders", interval)]


# -- schedules: set_enabled / get_schedule -------------------------------------------


def test_set_enabled_switches_a_trigger(store: SqlStore) -> None:
    store.sync_triggers([spec("orders")], T0)
    store.set_enabled("orders", False)
    assert store.get_schedule("orders")["enabled"] is False
    store.set_enabled("orders", False)  # setting the same value again is fine
    assert store.get_schedule("orders")["enabled"] is False
    store.set_enabled("orders", True)
    assert store.get_schedule("orders")["enabled"] is True


def test_disabling_records_who_when_and_why_and_enabling_clears_it(store: SqlStore) -> None:
    store.sync_triggers([spec("orders"), spec("files")], T0)
    assert {k: store.get_schedule("orders")[k] for k in PAUSE_FIELDS} == dict.fromkeys(PAUSE_FIELDS)
    before = store.now()
    store.set_enabled("orders", False, note="  supplier API down until Monday ", by="alice")
    paused = store.get_schedule("orders")
    assert (paused["enabled"], paused["paused_by"], paused["pause_note"]) == (
        False, "alice", "supplier API down until Monday")
    # When: on the store's clock, as an aware UTC datetime.
    assert paused["paused_at"].tzinfo is not None
    assert before - 1 <= paused["paused_at"].timestamp() <= store.now() + 1
    assert paused["updated_at"] == paused["paused_at"]
    # A sync (a worker's or beat's start-up, a changed interval) keeps the pause and the switch.
    store.sync_triggers([spec("orders", 9.0), spec("files")], T0 + 100, prune=True)
    synced = store.get_schedule("orders")
    assert synced["poll_interval"] == 9.0
    assert {k: synced[k] for k in ("enabled", *PAUSE_FIELDS)} == {
        k: paused[k] for k in ("enabled", *PAUSE_FIELDS)}
    # Disabling again replaces the pause; without a note or who, they are empty.
    store.set_enabled("orders", False)
    again = store.get_schedule("orders")
    assert (again["paused_by"], again["pause_note"]) == (None, None) and again["paused_at"] is not None
    assert store.get_schedule("files")["paused_at"] is None
    store.set_enabled("orders", True)
    enabled = store.get_schedule("orders")
    assert enabled["enabled"] is True
    assert {k: enabled[k] for k in PAUSE_FIELDS} == dict.fromkeys(PAUSE_FIELDS)
    assert [s["trigger_name"] for s in store.list_schedules() if s["paused_at"]] == []


def test_a_pause_note_is_checked_not_cut(store: SqlStore) -> None:
    store.sync_triggers([spec("orders")], T0)
    with pytest.raises(ValueError, match=r"'orders'.*1001 characters long; at most 1000"):
        store.set_enabled("orders", False, note="x" * 1001)
    with pytest.raises(ValueError, match="enabling clears them"):
        store.set_enabled("orders", True, note="back")
    with pytest.raises(TypeError, match="note must be a string"):
        store.set_enabled("orders", False, note=42)  # type: ignore[arg-type]
    assert store.get_schedule("orders")["enabled"] is True
    note = "Grüße, 注文 " + "n" * 900
    store.set_enabled("orders", False, note=note, by="b" * 200)
    assert store.get_schedule("orders")["pause_note"] == note
    assert store.get_schedule("orders")["paused_by"] == "b" * 200


def test_unknown_trigger_is_a_key_error_naming_it(store: SqlStore) -> None:
    store.sync_triggers([spec("orders")], T0)
    with pytest.raises(KeyError, match="no_such_trigger"):
        store.get_schedule("no_such_trigger")
    with pytest.raises(KeyError, match="no_such_trigger"):
        store.set_enabled("no_such_trigger", False)
    assert store.get_schedule("orders")["enabled"] is True


# -- schedules: claim_due ------------------------------------------------------------


def test_claim_due_returns_each_due_trigger_once_per_interval(store: SqlStore) -> None:
    store.sync_triggers([spec("fast", 5.0), spec("slow", 10.0)], T0)

    assert sorted(store.claim_due(T0, 100), key=lambda d: d.trigger_name) == [
        DuePoll("fast", 5.0), DuePoll("slow", 10.0),
    ]
    assert claimed(store, T0) == []
    assert claimed(store, T0 + 4.9) == []
    assert claimed(store, T0 + 5) == ["fast"]
    assert claimed(store, T0 + 5) == []
    assert claimed(store, T0 + 9.99) == []
    assert claimed(store, T0 + 10) == ["fast", "slow"]


def test_claim_due_advances_next_poll_at_by_one_interval(store: SqlStore) -> None:
    store.sync_triggers([spec("orders", 5.0)], T0)
    assert store.get_schedule("orders")["next_poll_at"] == utc(T0)

    assert claimed(store, T0 + 1) == ["orders"]  # a little late: stays on the grid
    assert store.get_schedule("orders")["next_poll_at"] == utc(T0 + 5)
    assert claimed(store, T0 + 5.5) == ["orders"]
    assert store.get_schedule("orders")["next_poll_at"] == utc(T0 + 10)


def test_claim_due_far_behind_moves_to_the_next_slot_of_its_own_grid(store: SqlStore) -> None:
    """After an outage there is no burst: one claim, then the next slot of the trigger's own grid."""
    store.sync_triggers([spec("orders", 5.0)], T0)
    assert claimed(store, T0 + 1000.25) == ["orders"]
    assert store.get_schedule("orders")["next_poll_at"] == utc(T0 + 1005)
    assert claimed(store, T0 + 1000.25) == []
    assert claimed(store, T0 + 1004.9) == []
    assert claimed(store, T0 + 1005) == ["orders"]


def test_triggers_that_fell_behind_together_keep_their_own_phase(store: SqlStore) -> None:
    """No herd: two triggers ten intervals behind keep their own phases, half an interval apart."""
    store.sync_triggers([spec("early", 1.0)], T0)  # next_poll_at T0
    store.sync_triggers([spec("early", 1.0), spec("late", 1.0)], T0 + 0.5)  # late's: T0 + 0.5
    assert store.get_schedule("early")["next_poll_at"] == utc(T0)

    # Nothing dispatched for ten intervals (an outage); then one claim of both.
    slots = {d.trigger_name: d for d in store.claim_due(T0 + 10.6, 10)}

    assert (slots["early"].due, slots["early"].next_due) == (T0 + 10, T0 + 11)
    assert (slots["late"].due, slots["late"].next_due) == (T0 + 10.5, T0 + 11.5)
    assert store.get_schedule("early")["next_poll_at"] == utc(T0 + 11)
    assert store.get_schedule("late")["next_poll_at"] == utc(T0 + 11.5)
    assert claimed(store, T0 + 11) == ["early"]  # from then on, each on its own grid
    assert claimed(store, T0 + 11.5) == ["late"]


def test_claim_due_skips_disabled_triggers(store: SqlStore) -> None:
    store.sync_triggers([spec("on"), spec("off")], T0)
    store.set_enabled("off", False)
    assert claimed(store, T0) == ["on"]
    store.set_enabled("off", True)
    assert claimed(store, T0 + 1) == ["off"]


def test_claim_due_skips_triggers_whose_poll_is_running(store: SqlStore) -> None:
    store.sync_triggers([spec("busy"), spec("idle")], T0)
    lease_of(store, "busy", T0)  # leased until T0 + 60
    assert claimed(store, T0) == ["idle"]
    assert claimed(store, T0 + 58) == ["idle"]  # next slot of idle: T0 + 60 (its grid: T0 + 5k)
    assert claimed(store, T0 + 59) == []
    assert claimed(store, T0 + 60.5) == ["busy", "idle"]  # busy's lease ended at T0 + 60


def test_claim_due_respects_the_limit(store: SqlStore) -> None:
    store.sync_triggers([spec(f"t{i}") for i in range(5)], T0)
    batches = [claimed(store, T0, limit=2) for _ in range(4)]
    assert [len(batch) for batch in batches] == [2, 2, 1, 0]
    assert sorted(name for batch in batches for name in batch) == [f"t{i}" for i in range(5)]


def test_concurrent_claim_due_splits_the_due_triggers(backend: Backend, store: SqlStore) -> None:
    """Four dispatchers (own store each) claim at the same instant: no trigger twice, none left."""
    names = [f"t{i:03d}" for i in range(60)]
    store.sync_triggers([spec(name) for name in names], T0)
    stores = [backend.store() for _ in range(4)]

    def dispatch(i: int) -> list[str]:
        got: list[str] = []
        while batch := stores[i].claim_due(T0, 4):
            got.extend(due.trigger_name for due in batch)
        return got

    per_thread = in_threads(4, dispatch)
    union = [name for got in per_thread for name in got]
    assert len(union) == len(set(union)), "a trigger was claimed twice"
    assert sorted(union) == names
    assert claimed(store, T0) == []


# -- schedules: begin_poll / finish_poll ---------------------------------------------


def test_begin_poll_takes_a_lease(store: SqlStore) -> None:
    store.sync_triggers([spec("orders")], T0)
    lease = store.begin_poll("orders", T0, 30.0, "tok-a")
    assert lease == PollLease(
        trigger_name="orders", token="tok-a", until=T0 + 30.0, state={}, state_version=0, consecutive_errors=0
    )
    assert store.get_schedule("orders")["last_poll_at"] == utc(T0)


def test_begin_poll_refuses_while_another_poll_runs(store: SqlStore) -> None:
    store.sync_triggers([spec("orders")], T0)
    first = lease_of(store, "orders", T0, "tok-1")
    assert store.begin_poll("orders", T0 + 1, LEASE, "tok-2") == PollRefusal("orders", "running")
    assert store.begin_poll("orders", first.until - 0.5, LEASE, "tok-2") == PollRefusal("orders", "running")

    second = store.begin_poll("orders", first.until + 0.5, LEASE, "tok-2")  # the first lease expired
    assert isinstance(second, PollLease)
    assert second.token == "tok-2"
    assert store.finish_poll(first, PollOutcome(error="late"), first.until + 1) is False
    assert store.finish_poll(second, PollOutcome(), first.until + 1) is True
    assert store.get_schedule("orders")["consecutive_errors"] == 0


def test_concurrent_begin_poll_gives_one_lease(backend: Backend, store: SqlStore) -> None:
    """Several beats and a manual "poll now" at the same instant: one poll runs, the rest are refused."""
    store.sync_triggers([spec("orders")], T0)
    stores = [backend.store() for _ in range(8)]
    results = in_threads(8, lambda i: stores[i].begin_poll("orders", T0, LEASE, f"tok-{i}"))
    leases = [r for r in results if isinstance(r, PollLease)]
    assert len(leases) == 1, results
    assert [r for r in results if not isinstance(r, PollLease)] == [PollRefusal("orders", "running")] * 7
    assert store.finish_poll(leases[0], PollOutcome(state={"by": leases[0].token}), T0 + 1) is True
    assert store.get_schedule("orders")["state"] == {"by": leases[0].token}


def test_begin_poll_refuses_disabled_and_missing_triggers(store: SqlStore) -> None:
    store.sync_triggers([spec("orders")], T0)
    store.set_enabled("orders", False)
    assert store.begin_poll("orders", T0, LEASE, "tok") == PollRefusal("orders", "disabled")
    assert store.begin_poll("ghost", T0, LEASE, "tok") == PollRefusal("ghost", "missing")
    assert store.get_schedule("orders")["last_poll_at"] is None
    store.set_enabled("orders", True)
    assert isinstance(store.begin_poll("orders", T0, LEASE, "tok"), PollLease)


def test_claim_due_gives_each_slot_and_the_next_and_stamps_last_poll_at(store: SqlStore) -> None:
    store.sync_triggers([spec("orders", 5.0)], T0)
    [first] = store.claim_due(T0 + 1, 10)  # a little late: the slot stays on the grid
    assert (first.due, first.next_due) == (T0, T0 + 5)
    assert store.get_schedule("orders")["last_poll_at"] == utc(T0 + 1)
    [behind] = store.claim_due(T0 + 100.25, 10)  # far behind: the last slot of its grid before now
    assert (behind.due, behind.next_due) == (T0 + 100, T0 + 105)


def test_spread_sync_puts_first_slots_within_the_first_interval_at_most_a_minute(store: SqlStore) -> None:
    names = [f"s{i:03d}" for i in range(200)]
    store.sync_triggers([spec(n, 1.0) for n in names] + [spec("hourly", 3600.0)], T0, spread=True)
    firsts = {n: store.get_schedule(n)["next_poll_at"].timestamp() for n in names}
    assert all(T0 <= at < T0 + 1.0 for at in firsts.values())
    assert len({round(at, 3) for at in firsts.values()}) > 150  # spread, not bunched
    assert T0 <= store.get_schedule("hourly")["next_poll_at"].timestamp() < T0 + 60
    store.sync_triggers([spec(n, 1.0) for n in names], T0 + 50, spread=True)  # unchanged rows keep theirs
    assert {n: store.get_schedule(n)["next_poll_at"].timestamp() for n in names} == firsts


def test_a_late_poll_takes_the_lease_only_while_the_next_slot_is_unclaimed(store: SqlStore) -> None:
    store.sync_triggers([spec("orders", 1.0), spec("other", 1.0)], T0)
    [slot] = [d for d in store.claim_due(T0, 10) if d.trigger_name == "orders"]
    late = store.begin_poll("orders", T0 + 0.8, LEASE, "tok-a", slot_end=slot.next_due)
    assert isinstance(late, PollLease) and late.held
    assert store.finish_poll(late, PollOutcome(), T0 + 0.85) is True
    [next_slot] = [d for d in store.claim_due(T0 + 1, 10) if d.trigger_name == "orders"]
    refused = store.begin_poll("orders", T0 + 1.9, LEASE, "tok-b", slot_end=slot.next_due)
    assert refused == PollRefusal("orders", "late")  # its own slot is over: the next one was sent
    assert store.get_schedule("orders")["last_poll_at"] == utc(T0 + 1)
    assert isinstance(store.begin_poll("orders", T0 + 1.9, LEASE, "tok-c", slot_end=next_slot.next_due),
                      PollLease)


def test_claimed_slots_carry_the_error_count(store: SqlStore) -> None:
    store.sync_triggers([spec("orders", 5.0)], T0)
    lease = lease_of(store, "orders", T0)
    assert store.finish_poll(lease, PollOutcome(error="ValueError: x"), T0 + 1) is True
    [slot] = store.claim_due(T0 + 2, 10)
    assert slot.errors == 1


def test_an_unheld_poll_writes_nothing_and_sees_state_and_errors(store: SqlStore) -> None:
    store.sync_triggers([spec("orders")], T0)
    manual = lease_of(store, "orders", T0)
    assert store.finish_poll(manual, PollOutcome(error="ValueError: x", state={"n": 1}), T0 + 1) is True
    before = store.get_schedule("orders")

    lease = store.begin_poll("orders", T0 + 5, LEASE, "tok-s", hold=False)

    assert isinstance(lease, PollLease) and lease.held is False
    assert (lease.state, lease.state_version, lease.consecutive_errors) == ({"n": 1}, 1, 1)
    assert store.get_schedule("orders") == before
    assert claimed(store, T0 + 5) == ["orders"]  # no lease was written


def test_an_unheld_poll_is_refused_when_disabled_missing_or_held(store: SqlStore) -> None:
    store.sync_triggers([spec("orders")], T0)
    assert store.begin_poll("ghost", T0, LEASE, "t", hold=False) == PollRefusal("ghost", "missing")
    lease_of(store, "orders", T0)  # a manual poll holds it until T0 + 60
    assert store.begin_poll("orders", T0 + 1, LEASE, "t", hold=False) == PollRefusal("orders", "running")
    store.set_enabled("orders", False)
    assert store.begin_poll("orders", T0 + 61, LEASE, "t", hold=False) == PollRefusal("orders", "disabled")


def test_finishing_an_unheld_poll_writes_only_what_changed(store: SqlStore) -> None:
    store.sync_triggers([spec("orders")], T0)
    lease = store.begin_poll("orders", T0, LEASE, "tok", hold=False)
    assert isinstance(lease, PollLease)
    before = store.get_schedule("orders")
    assert store.finish_poll(lease, PollOutcome(), T0 + 1, hold_until=T0 + 2.5) is True
    assert store.get_schedule("orders") == before
    assert store.finish_poll(lease, PollOutcome(state={"seen": 1}), T0 + 1) is True
    assert store.get_schedule("orders")["state"] == {"seen": 1}
    # The same read state saved twice: the second poll lost the race and saves nothing.
    assert store.finish_poll(lease, PollOutcome(state={"seen": 2}), T0 + 1) is False
    assert store.get_schedule("orders")["state"] == {"seen": 1}


def test_extend_poll_lease_takes_a_free_trigger_and_keeps_it(store: SqlStore) -> None:
    store.sync_triggers([spec("orders", 5.0)], T0)
    assert store.extend_poll_lease("orders", "tok-a", T0 + 60, T0 + 4) is True
    assert claimed(store, T0 + 5) == []  # the running poll holds the next slot back
    assert store.begin_poll("orders", T0 + 5, LEASE, "t", hold=False) == PollRefusal("orders", "running")
    assert store.begin_poll("orders", T0 + 5, LEASE, "tok-b") == PollRefusal("orders", "running")
    assert store.extend_poll_lease("orders", "tok-b", T0 + 90, T0 + 6) is False
    assert store.extend_poll_lease("orders", "tok-a", T0 + 70, T0 + 6) is True  # its own: again
    held = PollLease("orders", "tok-a", T0 + 70, held=True)
    assert store.finish_poll(held, PollOutcome(), T0 + 7) is True
    assert claimed(store, T0 + 7) == ["orders"]


def test_a_late_poll_keeps_half_an_interval_from_the_next_scheduled_one(store: SqlStore) -> None:
    """``hold_until`` keeps dispatch and unheld polls away; a manual poll may still run."""
    store.sync_triggers([spec("orders", 1.0)], T0)
    assert claimed(store, T0) == ["orders"]
    late = lease_of(store, "orders", T0 + 0.9)
    assert store.finish_poll(late, PollOutcome(), T0 + 0.95, hold_until=T0 + 1.4) is True
    assert claimed(store, T0 + 1.2) == []
    assert store.begin_poll("orders", T0 + 1.2, LEASE, "t", hold=False) == PollRefusal("orders", "too_soon")
    manual = store.begin_poll("orders", T0 + 1.2, LEASE, "tok-3")
    assert isinstance(manual, PollLease)
    assert store.get_schedule("orders")["last_poll_at"] == utc(T0 + 1.2)
    assert store.finish_poll(manual, PollOutcome(), T0 + 1.3) is True
    assert claimed(store, T0 + 1.3) == ["orders"]  # the manual poll's end released the hold


def test_the_hold_of_a_late_poll_delays_the_next_slot_until_it_ends(store: SqlStore) -> None:
    store.sync_triggers([spec("orders", 1.0)], T0)
    assert claimed(store, T0) == ["orders"]  # next slot T0 + 1
    late = lease_of(store, "orders", T0 + 0.9)
    assert store.finish_poll(late, PollOutcome(), T0 + 0.95, hold_until=T0 + 1.4) is True
    assert claimed(store, T0 + 1.39) == []
    [slot] = store.claim_due(T0 + 1.41, 10)
    assert (slot.due, slot.next_due) == (T0 + 1, T0 + 2)  # still on the grid


def test_finish_poll_releases_the_lease(store: SqlStore) -> None:
    store.sync_triggers([spec("orders")], T0)
    lease = lease_of(store, "orders", T0)
    assert store.finish_poll(lease, PollOutcome(), T0 + 1) is True
    assert isinstance(store.begin_poll("orders", T0 + 1, LEASE, "tok-2"), PollLease)


def test_finish_poll_counts_errors_and_resets_after_success(store: SqlStore) -> None:
    store.sync_triggers([spec("orders")], T0)

    lease = lease_of(store, "orders", T0, "a")
    assert store.finish_poll(lease, PollOutcome(error="ValueError: first"), T0 + 1) is True
    row = store.get_schedule("orders")
    assert (row["consecutive_errors"], row["last_error"]) == (1, "ValueError: first")
    assert row["last_error_at"] == utc(T0 + 1)

    lease = lease_of(store, "orders", T0 + 10, "b")
    assert lease.consecutive_errors == 1
    assert store.finish_poll(lease, PollOutcome(error="TimeoutError: second"), T0 + 11) is True
    row = store.get_schedule("orders")
    assert (row["consecutive_errors"], row["last_error"]) == (2, "TimeoutError: second")
    assert row["last_error_at"] == utc(T0 + 11)

    lease = lease_of(store, "orders", T0 + 20, "c")
    assert lease.consecutive_errors == 2
    assert store.finish_poll(lease, PollOutcome(), T0 + 21) is True
    assert store.get_schedule("orders")["consecutive_errors"] == 0
    assert lease_of(store, "orders", T0 + 30, "d").consecutive_errors == 0


def test_finish_poll_records_the_fire_time(store: SqlStore) -> None:
    store.sync_triggers([spec("orders")], T0)
    lease = lease_of(store, "orders", T0)
    assert store.finish_poll(lease, PollOutcome(fired_at=D0), T0 + 1) is True
    assert store.get_schedule("orders")["last_fire_at"] == D0


def test_finish_poll_saves_state_and_bumps_its_version(store: SqlStore) -> None:
    store.sync_triggers([spec("orders")], T0)

    lease = lease_of(store, "orders", T0, "a")
    assert (lease.state, lease.state_version) == ({}, 0)
    assert store.finish_poll(lease, PollOutcome(state={"cursor": 7, "seen": ["a", "b"]}), T0 + 1) is True

    lease = lease_of(store, "orders", T0 + 5, "b")
    assert (lease.state, lease.state_version) == ({"cursor": 7, "seen": ["a", "b"]}, 1)
    assert store.finish_poll(lease, PollOutcome(state=None), T0 + 6) is True  # unchanged state: not written

    lease = lease_of(store, "orders", T0 + 10, "c")
    assert (lease.state, lease.state_version) == ({"cursor": 7, "seen": ["a", "b"]}, 1)
    assert store.finish_poll(lease, PollOutcome(state={"cursor": 8}), T0 + 11) is True
    assert store.get_schedule("orders")["state"] == {"cursor": 8}
    assert lease_of(store, "orders", T0 + 20, "d").state_version == 2


def test_finish_poll_with_a_wrong_token_changes_nothing(store: SqlStore) -> None:
    store.sync_triggers([spec("orders")], T0)
    lease = lease_of(store, "orders", T0, "mine")
    forged = PollLease("orders", "not-mine", lease.until, lease.state, lease.state_version)

    outcome = PollOutcome(error="boom", state={"x": 1}, fired_at=D0, deduplicated=True)
    assert store.finish_poll(forged, outcome, T0 + 1) is False
    row = store.get_schedule("orders")
    assert (row["consecutive_errors"], row["last_error"], row["state"]) == (0, None, {})
    assert (row["last_fire_at"], row["dedup_count"]) == (None, 0)
    assert store.begin_poll("orders", T0 + 1, LEASE, "other") == PollRefusal("orders", "running")
    assert store.finish_poll(lease, PollOutcome(), T0 + 2) is True


def test_finish_poll_of_an_unknown_trigger_is_false(store: SqlStore) -> None:
    assert store.finish_poll(PollLease("ghost", "tok", T0 + 60), PollOutcome(), T0) is False


def test_deduplicated_outcomes_are_counted(store: SqlStore) -> None:
    store.sync_triggers([spec("orders")], T0)
    for i in range(3):
        lease = lease_of(store, "orders", T0 + 10 * i, f"tok-{i}")
        assert store.finish_poll(lease, PollOutcome(deduplicated=True), T0 + 10 * i + 1) is True
    lease = lease_of(store, "orders", T0 + 40, "tok-x")
    assert store.finish_poll(lease, PollOutcome(), T0 + 41) is True
    row = store.get_schedule("orders")
    assert row["dedup_count"] == 3
    assert row["last_fire_at"] is None


# -- executions: record_fire and claims ------------------------------------------------


def test_record_fire_without_claim_always_writes(store: SqlStore) -> None:
    first, second = new_execution(), new_execution()
    assert first.context_hash == second.context_hash
    assert fired(store, first, claim=False) is True
    assert fired(store, second, T0 + 1, claim=False) is True

    history = store.execution_history("orders")
    assert {e["execution_id"] for e in history} == {first.execution_id, second.execution_id}
    assert {e["status"] for e in history} == {"queued"}
    assert sorted(ids_of(store.sweep_candidates(FAR, 10))) == sorted(e["execution_id"] for e in history)


def test_record_fire_writes_the_execution_row(store: SqlStore) -> None:
    execution = new_execution(context={"order": 42, "items": [1, 2]})
    assert fired(store, execution) is True
    row = store.get_execution(execution.execution_id)
    assert row == {
        "execution_id": execution.execution_id, "trigger_name": "orders", "workflow": "wf",
        "context": {"order": 42, "items": [1, 2]}, "context_hash": execution.context_hash,
        "dedup_hash": execution.context_hash, "status": "queued", "task_ids": execution.task_ids,
        "started_at": D0, "running_at": None,
        "completed_at": None, "error": None,
    }


def test_record_fire_with_a_live_claim_is_refused_and_writes_nothing(store: SqlStore) -> None:
    first, second = new_execution(), new_execution()
    assert fired(store, first) is True
    assert fired(store, second, T0 + 1) is False

    with pytest.raises(KeyError):
        store.get_execution(second.execution_id)
    assert ids_of(store.execution_history("orders")) == [first.execution_id]


def test_claims_are_per_trigger_and_context_hash(store: SqlStore) -> None:
    assert fired(store, new_execution("orders", {"order": 1})) is True
    assert fired(store, new_execution("orders", {"order": 2})) is True
    assert fired(store, new_execution("invoices", {"order": 1})) is True
    assert fired(store, new_execution("orders", {"order": 1})) is False
    assert fired(store, new_execution("invoices", {"order": 2})) is True
    assert len(store.execution_history("orders")) == 2
    assert len(store.execution_history("invoices")) == 2


@pytest.mark.sql_only
@pytest.mark.parametrize("status", FINAL_STATUSES)
def test_finishing_an_execution_releases_its_claim(store: SqlStore, status: str) -> None:
    first = new_execution()
    assert fired(store, first) is True
    assert store.finish_execution(first.execution_id, status, None, D0 + timedelta(seconds=5)) is True

    with store.engine.connect() as conn:
        left = conn.execute(select(claims).where(claims.c.execution_id == first.execution_id)).all()
    assert left == []
    again = new_execution()
    assert fired(store, again, T0 + 6) is True
    assert fired(store, new_execution(), T0 + 7) is False


def test_a_claim_never_expires_while_its_execution_is_active(store: SqlStore) -> None:
    first = new_execution()
    assert fired(store, first, deadline=T0 + 60) is True
    assert store.start_step(first.execution_id, "t1", T0 + 1, T0 + 31)
    for later in (T0 + 61, T0 + 7 * 3600, FAR):  # past its deadline, past the old claim TTL: still held
        assert fired(store, new_execution(), later) is False
    assert ids_of(store.execution_history("orders")) == [first.execution_id]
    assert store.end_overdue(first.execution_id, "lost", "no heartbeat", FAR) is True
    assert fired(store, new_execution(), FAR + 1) is True


def end_behind_the_store(
    backend: Backend, store: SqlStore, execution_id: str, *, remove: bool = False
) -> None:
    """End (or ``remove``) an execution's row without releasing its claim, as a crash between
    two writes of an older version could leave it."""
    if backend.name == "django":
        from django_cloaca.models import TriggerExecution

        rows = TriggerExecution.objects.filter(pk=execution_id)
        if remove:
            rows.delete()
        else:
            rows.update(status="succeeded", completed_at=D0)
        return
    row = executions.c.execution_id == execution_id
    with store.engine.begin() as conn:
        if remove:
            conn.execute(delete(executions).where(row))
        else:
            conn.execute(update(executions).where(row).values(status="succeeded", completed_at=D0))


@pytest.mark.parametrize("remove", [False, True], ids=["ended", "missing"])
def test_a_claim_whose_execution_is_not_active_is_taken_over(
    backend: Backend, store: SqlStore, remove: bool
) -> None:
    first = new_execution()
    assert fired(store, first) is True
    end_behind_the_store(backend, store, first.execution_id, remove=remove)

    second = new_execution()
    assert fired(store, second, T0 + 1) is True
    assert fired(store, new_execution(), T0 + 2) is False  # the new holder holds it
    # A late end of the first holder does not release the claim of the second.
    assert store.finish_execution(first.execution_id, "lost", "gone", D0 + timedelta(seconds=3)) is False
    assert fired(store, new_execution(), T0 + 4) is False
    assert store.finish_execution(second.execution_id, "succeeded", None, D0 + timedelta(seconds=5)) is True
    assert fired(store, new_execution(), T0 + 6) is True


def test_concurrent_takeover_of_an_ended_holders_claim_has_one_winner(
    backend: Backend, store: SqlStore
) -> None:
    first = new_execution()
    assert fired(store, first) is True
    end_behind_the_store(backend, store, first.execution_id)
    stores = [backend.store() for _ in range(8)]
    attempts = [new_execution() for _ in range(8)]

    results = in_threads(8, lambda i: fired(stores[i], attempts[i], T0 + 100))
    assert results.count(True) == 1, results
    winner = attempts[results.index(True)]
    assert len(store.execution_history("orders")) == 2
    assert store.get_execution(winner.execution_id)["status"] == "queued"
    assert store.finish_execution(winner.execution_id, "succeeded", None, D0 + timedelta(minutes=2))
    assert fired(store, new_execution(), T0 + 130) is True


def test_concurrent_fires_of_the_same_context_claim_once(backend: Backend, store: SqlStore) -> None:
    stores = [backend.store() for _ in range(8)]
    attempts = [new_execution() for _ in range(8)]

    results = in_threads(8, lambda i: fired(stores[i], attempts[i]))
    assert results.count(True) == 1, results
    winner = attempts[results.index(True)]
    assert ids_of(store.execution_history("orders")) == [winner.execution_id]


# -- executions: status changes --------------------------------------------------------


def test_finish_execution_is_idempotent(store: SqlStore) -> None:
    execution = new_execution()
    assert fired(store, execution) is True
    assert store.start_step(execution.execution_id, "t1", T0 + 1, T0 + 31)
    end = D0 + timedelta(seconds=9)
    assert store.finish_execution(execution.execution_id, "failed", "ValueError: bad row", end) is True
    later = end + timedelta(seconds=1)
    assert store.finish_execution(execution.execution_id, "succeeded", None, later) is False

    row = store.get_execution(execution.execution_id)
    assert (row["status"], row["error"], row["completed_at"]) == ("failed", "ValueError: bad row", end)
    assert store.finish_execution("no-such-execution", "succeeded", None, end) is False


@pytest.mark.parametrize("status", ["queued", "running", "done", ""])
def test_finish_execution_rejects_a_non_final_status(store: SqlStore, status: str) -> None:
    execution = new_execution()
    assert fired(store, execution) is True
    with pytest.raises(ValueError, match=repr(status)):
        store.finish_execution(execution.execution_id, status, None, D0)
    assert store.get_execution(execution.execution_id)["status"] == "queued"
    assert fired(store, new_execution()) is False  # the claim is still held


# -- executions: leases, steps and the deadline rule ------------------------------------------


def candidate(store: SqlStore, execution_id: str) -> dict[str, Any] | None:
    """The execution as the sweep sees it (every active one is overdue at ``FAR``); ``None`` if ended."""
    found = [row for row in store.sweep_candidates(FAR, 1000) if row["execution_id"] == execution_id]
    return found[0] if found else None


def deadline_of(store: SqlStore, execution_id: str) -> float | None:
    row = candidate(store, execution_id)
    return None if row is None else row["deadline_at"]


def step(
    task_id: str, state: str, started: float, updated: float, waiting: float | None = None
) -> dict[str, Any]:
    return {"task_id": task_id, "state": state, "started_at": started, "updated_at": updated,
            "waiting_until": waiting}


def step_rows(backend: Backend, store: SqlStore, execution_id: str) -> list[dict[str, Any]]:
    """The step rows of an execution, read from the table (the store shows them only while it is active)."""
    if backend.name == "django":
        from django_cloaca.models import TriggerStep

        return list(TriggerStep.objects.filter(execution_id=execution_id).order_by("started_at", "task_id")
                    .values(*STEP_FIELDS))
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(*(steps.c[name] for name in STEP_FIELDS)).where(steps.c.execution_id == execution_id)
            .order_by(steps.c.started_at, steps.c.task_id)
        ).all()
    return [dict(row._mapping) for row in rows]


def claim_is_free(store: SqlStore, at: float, context: dict[str, Any] | None = None) -> bool:
    """Whether the claim of ``context`` can be taken (and take it, ending the taker at once)."""
    taker = new_execution(context=context)
    if not fired(store, taker, at):
        return False
    assert store.finish_execution(taker.execution_id, "succeeded", None, utc(at))
    return True


def running(
    store: SqlStore, *task_ids: str, now: float = T0, lease: float = STEP_LEASE,
    context: dict[str, Any] | None = None,
) -> str:
    """A fired execution of ``context`` (claimed, at ``now``) whose ``task_ids`` have started; its id."""
    execution = new_execution(context=context)
    assert fired(store, execution, now) is True
    for task_id in task_ids:
        assert store.start_step(execution.execution_id, task_id, now, now + lease) is True
    return execution.execution_id


def test_now_is_the_databases_clock(store: SqlStore) -> None:
    before = time.time()
    now = store.now()
    after = time.time()
    assert isinstance(now, float)
    # The database runs on this machine: its clock agrees with ours far within this bound.
    assert before - 5.0 < now < after + 5.0


def test_record_fire_sets_the_deadline(store: SqlStore) -> None:
    execution = new_execution()
    assert fired(store, execution, T0, deadline=T0 + 123.25) is True
    row = candidate(store, execution.execution_id)
    assert row is not None
    assert (row["deadline_at"], row["ending_status"], row["steps"]) == (T0 + 123.25, None, [])
    assert {key: row[key] for key in store.get_execution(execution.execution_id)} == store.get_execution(
        execution.execution_id
    )


def test_start_step_runs_the_execution_and_gives_it_the_lease(store: SqlStore) -> None:
    execution = new_execution()
    assert fired(store, execution, T0) is True  # deadline T0 + QUEUED
    eid = execution.execution_id
    assert store.start_step(eid, "t1", T0 + 1, T0 + 31) is True

    row = store.get_execution(eid)
    assert (row["status"], row["running_at"]) == ("running", utc(T0 + 1))
    # The step's lease replaces the (later) deadline of a fire waiting in the broker.
    assert deadline_of(store, eid) == T0 + 31
    assert candidate(store, eid)["steps"] == [step("t1", "running", T0 + 1, T0 + 1)]  # type: ignore[index]

    # The same task again (a redelivery): its row keeps started_at, the execution its running_at.
    assert store.start_step(eid, "t1", T0 + 5, T0 + 35) is True
    assert store.get_execution(eid)["running_at"] == utc(T0 + 1)
    assert candidate(store, eid)["steps"] == [step("t1", "running", T0 + 1, T0 + 5)]  # type: ignore[index]
    assert deadline_of(store, eid) == T0 + 35


def test_start_step_leaves_every_later_commit_durable(postgresql_store: SqlStore) -> None:
    """On PostgreSQL a step's start commits without waiting for the disk (its transaction only):
    the pooled connection it ran on must not carry that into the fires and ends written next."""
    store = postgresql_store
    execution = new_execution()
    assert fired(store, execution, T0) is True
    assert store.start_step(execution.execution_id, "t1", T0 + 1, T0 + 31) is True
    with store.engine.connect() as conn:  # the pool's only connection: the one start_step used
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    assert store.engine.pool.checkedin() == 1


def test_start_step_keeps_the_later_deadline_while_other_steps_run(store: SqlStore) -> None:
    eid = running(store, "t1", now=T0, lease=100.0)
    assert deadline_of(store, eid) == T0 + 100
    assert store.start_step(eid, "t2", T0 + 1, T0 + 50) is True
    assert deadline_of(store, eid) == T0 + 100
    assert store.start_step(eid, "t3", T0 + 2, T0 + 150) is True
    assert deadline_of(store, eid) == T0 + 150
    assert [s["task_id"] for s in candidate(store, eid)["steps"]] == ["t1", "t2", "t3"]  # type: ignore[index]


def test_a_step_after_the_others_ended_replaces_the_idle_deadline(store: SqlStore) -> None:
    eid = running(store, "t1", now=T0)
    assert store.end_step(eid, "t1", T0 + 5, T0 + 5 + QUEUED) is False
    assert deadline_of(store, eid) == T0 + 5 + QUEUED
    assert store.start_step(eid, "t2", T0 + 6, T0 + 36) is True
    assert deadline_of(store, eid) == T0 + 36


def test_start_step_of_an_ended_execution_is_refused_and_writes_nothing(
    backend: Backend, store: SqlStore
) -> None:
    eid = running(store, "t1")
    end = D0 + timedelta(seconds=9)
    assert store.finish_execution(eid, "succeeded", None, end) is True
    assert store.start_step(eid, "t2", T0 + 10, T0 + 40) is False
    row = store.get_execution(eid)
    assert (row["status"], row["completed_at"], row["running_at"]) == ("succeeded", end, utc(T0))
    assert [s["task_id"] for s in step_rows(backend, store, eid)] == ["t1"]
    assert candidate(store, eid) is None


def test_start_step_of_an_ending_execution_is_refused(backend: Backend, store: SqlStore) -> None:
    eid = running(store, "t1", "t2")
    assert store.request_end(eid, "failed", "ValueError: t1", T0 + 2, task_id="t1") is False
    before = candidate(store, eid)
    assert store.start_step(eid, "t3", T0 + 3, T0 + 33) is False
    assert store.start_step(eid, "t2", T0 + 3, T0 + 33) is False  # not even a redelivery of a live one
    assert candidate(store, eid) == before
    assert [s["task_id"] for s in step_rows(backend, store, eid)] == ["t1", "t2"]


def test_start_step_of_a_missing_execution_is_refused(backend: Backend, store: SqlStore) -> None:
    assert store.start_step("no-such-execution", "t1", T0, T0 + 30) is False
    assert step_rows(backend, store, "no-such-execution") == []
    with pytest.raises(KeyError):
        store.get_execution("no-such-execution")


def test_end_step_of_the_last_live_step_leaves_the_execution_idle(store: SqlStore) -> None:
    eid = running(store, "t1", "t2")
    assert store.end_step(eid, "t1", T0 + 4, T0 + 4 + QUEUED) is False
    assert deadline_of(store, eid) == T0 + STEP_LEASE  # t2 still runs: unchanged
    assert store.end_step(eid, "t2", T0 + 5, T0 + 5 + QUEUED) is False
    row = candidate(store, eid)
    assert row is not None
    assert (row["status"], row["deadline_at"], row["ending_status"]) == ("running", T0 + 5 + QUEUED, None)
    assert row["steps"] == [step("t1", "done", T0, T0 + 4), step("t2", "done", T0, T0 + 5)]
    assert claim_is_free(store, T0 + 6) is False  # idle is not ended: the next step waits in the broker


def test_a_step_waiting_to_retry_keeps_the_execution_alive(store: SqlStore) -> None:
    eid = running(store, "t1", "t2")
    assert store.end_step(eid, "t1", T0 + 2, T0 + 2 + QUEUED, retry_until=T0 + 500) is False
    assert deadline_of(store, eid) == T0 + 500
    assert store.end_step(eid, "t2", T0 + 3, T0 + 3 + QUEUED) is False  # t1 waits: it is live
    row = candidate(store, eid)
    assert row is not None and row["deadline_at"] == T0 + 500
    assert row["steps"] == [step("t1", "waiting", T0, T0 + 2, T0 + 500), step("t2", "done", T0, T0 + 3)]
    # A retry that comes sooner than the deadline does not lower it.
    assert store.end_step(eid, "t1", T0 + 4, T0 + 4 + QUEUED, retry_until=T0 + 100) is False
    assert deadline_of(store, eid) == T0 + 500
    # The retry runs: the only live step again, its lease is the deadline.
    assert store.start_step(eid, "t1", T0 + 100, T0 + 130) is True
    row = candidate(store, eid)
    assert row is not None and row["deadline_at"] == T0 + 130
    assert row["steps"][0] == step("t1", "running", T0, T0 + 100)


def test_end_step_without_a_start_creates_the_row_done(store: SqlStore) -> None:
    eid = running(store)
    assert store.end_step(eid, "early", T0 + 3, T0 + 3 + QUEUED) is False
    assert candidate(store, eid)["steps"] == [step("early", "done", T0 + 3, T0 + 3)]  # type: ignore[index]
    assert deadline_of(store, eid) == T0 + 3 + QUEUED


def test_end_step_leaves_an_ended_or_missing_execution_alone(backend: Backend, store: SqlStore) -> None:
    eid = running(store, "t1")
    end = D0 + timedelta(seconds=9)
    assert store.finish_execution(eid, "revoked", "by the operator", end) is True
    assert store.end_step(eid, "t1", T0 + 10, T0 + 10 + QUEUED) is False
    row = store.get_execution(eid)
    assert (row["status"], row["error"], row["completed_at"]) == ("revoked", "by the operator", end)
    assert step_rows(backend, store, eid) == [step("t1", "running", T0, T0)]
    assert store.end_step("no-such-execution", "t1", T0, T0 + QUEUED) is False
    assert step_rows(backend, store, "no-such-execution") == []


def test_end_step_ends_an_execution_whose_end_was_requested(store: SqlStore) -> None:
    eid = running(store, "t1", "t2", "t3")
    assert store.request_end(eid, "failed", "ValueError: first", T0 + 2, task_id="t1") is False
    assert store.request_end(eid, "revoked", "task t2 was revoked", T0 + 3, task_id="t2") is False
    row = candidate(store, eid)
    assert row is not None
    assert (row["status"], row["ending_status"], row["error"]) == ("running", "failed", "ValueError: first")
    assert claim_is_free(store, T0 + 4) is False  # t3 still runs: the claim is held

    assert store.end_step(eid, "t3", T0 + 9, T0 + 9 + QUEUED) is True
    row = store.get_execution(eid)
    assert (row["status"], row["error"], row["completed_at"]) == ("failed", "ValueError: first", utc(T0 + 9))
    assert candidate(store, eid) is None
    assert claim_is_free(store, T0 + 10) is True
    assert store.end_step(eid, "t3", T0 + 11, T0 + 11 + QUEUED) is False  # a second end changes nothing
    assert store.get_execution(eid) == row


@pytest.mark.parametrize("status", ["failed", "revoked"])
def test_request_end_without_other_live_steps_ends_now(store: SqlStore, status: str) -> None:
    eid = running(store, "t1")
    assert store.end_step(eid, "t0", T0 + 1, T0 + 1 + QUEUED) is False  # a done step does not count
    assert store.request_end(eid, status, f"{status}: t1", T0 + 4, task_id="t1") is True
    row = store.get_execution(eid)
    assert (row["status"], row["error"], row["completed_at"]) == (status, f"{status}: t1", utc(T0 + 4))
    assert candidate(store, eid) is None
    assert claim_is_free(store, T0 + 5) is True
    assert store.request_end(eid, "failed", "again", T0 + 6, task_id="t1") is False
    assert store.get_execution(eid) == row
    assert store.request_end("no-such-execution", "failed", None, T0) is False


def test_request_end_without_a_task_counts_every_live_step(store: SqlStore) -> None:
    eid = running(store, "t1")
    assert store.request_end(eid, "revoked", "revoked by the operator", T0 + 2) is False
    assert candidate(store, eid)["ending_status"] == "revoked"  # type: ignore[index]
    assert store.end_step(eid, "t1", T0 + 3, T0 + 3 + QUEUED) is True
    assert store.get_execution(eid)["status"] == "revoked"


def test_the_last_step_requesting_an_end_ends_with_the_first_request(store: SqlStore) -> None:
    eid = running(store, "t1", "t2")
    assert store.request_end(eid, "revoked", "task t1 was revoked", T0 + 2, task_id="t1") is False
    assert store.request_end(eid, "failed", "ValueError: t2", T0 + 3, task_id="t2") is True
    row = store.get_execution(eid)
    assert (row["status"], row["error"]) == ("revoked", "task t1 was revoked")
    assert row["completed_at"] == utc(T0 + 3)


@pytest.mark.parametrize("status", ["succeeded", "lost", "queued", "done"])
def test_request_end_takes_only_failed_or_revoked(store: SqlStore, status: str) -> None:
    eid = running(store, "t1")
    with pytest.raises(ValueError, match=repr(status)):
        store.request_end(eid, status, None, T0 + 1, task_id="t1")
    assert candidate(store, eid)["steps"] == [step("t1", "running", T0, T0)]  # type: ignore[index]


def test_renew_leases_extends_the_active_and_returns_the_others(store: SqlStore) -> None:
    live, other = running(store, "t1"), running(store, "t1-b", context={"order": 2})
    ended = new_execution(context={"order": 3})
    assert fired(store, ended) is True
    assert store.finish_execution(ended.execution_id, "succeeded", None, D0)

    given = [live, other, ended.execution_id, "no-such-execution"]
    assert store.renew_leases(given, T0 + 200) == {ended.execution_id, "no-such-execution"}
    assert (deadline_of(store, live), deadline_of(store, other)) == (T0 + 200, T0 + 200)
    assert store.renew_leases([live], T0 + 150) == set()  # never lowered
    assert deadline_of(store, live) == T0 + 200
    assert store.renew_leases([], T0 + 300) == set()
    assert store.get_execution(ended.execution_id)["status"] == "succeeded"


def test_sweep_candidates_are_the_overdue_by_deadline_and_paged(store: SqlStore) -> None:
    deadlines = {"e-00": T0 + 10, "e-01": T0 + 10, "e-02": T0 + 5, "e-03": T0 + 20, "e-04": T0 + 1,
                 "e-05": T0 + 100, "e-06": T0 + 50}
    for n, (eid, deadline) in enumerate(deadlines.items()):
        assert fired(store, new_execution(context={"n": n}, execution_id=eid), deadline=deadline)
    assert store.finish_execution("e-04", "succeeded", None, D0)  # ended: never a candidate
    assert store.start_step("e-00", "e-00-1", T0, T0 + 10) is True
    assert store.end_step("e-00", "e-00-2", T0 + 1, T0 + 10, retry_until=T0 + 2) is False

    now = T0 + 50  # e-06 is due exactly now: not yet overdue
    assert ids_of(store.sweep_candidates(now, 10)) == ["e-02", "e-00", "e-01", "e-03"]
    first = store.sweep_candidates(now, 2)
    assert ids_of(first) == ["e-02", "e-00"]
    last = first[-1]
    second = store.sweep_candidates(now, 2, after=(last["deadline_at"], last["execution_id"]))
    assert ids_of(second) == ["e-01", "e-03"]
    assert store.sweep_candidates(now, 2, after=(T0 + 20, "e-03")) == []

    row = first[1]
    assert (row["deadline_at"], row["ending_status"], row["status"]) == (T0 + 10, None, "running")
    assert row["steps"] == [
        step("e-00-1", "running", T0, T0), step("e-00-2", "waiting", T0 + 1, T0 + 1, T0 + 2)
    ]
    assert {k: row[k] for k in store.get_execution("e-00")} == store.get_execution("e-00")
    assert second[0]["steps"] == []


def test_end_overdue_ends_only_an_execution_past_its_deadline(store: SqlStore) -> None:
    eid = running(store, "t1")  # deadline T0 + 30
    assert store.end_overdue(eid, "lost", "no heartbeat", T0 + 30) is False
    assert store.get_execution(eid)["status"] == "running"
    assert claim_is_free(store, T0 + 30) is False

    assert store.end_overdue(eid, "lost", "no heartbeat for 30s", T0 + 31) is True
    row = store.get_execution(eid)
    assert (row["status"], row["error"]) == ("lost", "no heartbeat for 30s")
    assert row["completed_at"] == utc(T0 + 31)
    assert candidate(store, eid) is None
    assert claim_is_free(store, T0 + 32) is True
    assert store.end_overdue(eid, "failed", "again", T0 + 40) is False
    assert store.get_execution(eid) == row
    assert store.end_overdue("no-such-execution", "lost", None, T0) is False


def test_end_overdue_loses_to_a_renewal(store: SqlStore) -> None:
    eid = running(store, "t1")  # deadline T0 + 30
    assert ids_of(store.sweep_candidates(T0 + 40, 10)) == [eid]  # the sweep sees it overdue ...
    assert store.renew_leases([eid], T0 + 70) == set()  # ... and its heartbeat comes before the end
    assert store.end_overdue(eid, "lost", "no heartbeat", T0 + 40) is False
    assert store.get_execution(eid)["status"] == "running"
    assert claim_is_free(store, T0 + 41) is False


@pytest.mark.parametrize("rival", ["renew_leases", "start_step"])
def test_end_overdue_and_a_live_step_racing_have_one_winner(
    backend: Backend, store: SqlStore, rival: str
) -> None:
    """The sweep ends an overdue execution while its step renews (or a step starts): exactly one wins."""
    sweeper, worker = backend.store(), backend.store()
    for n in range(6):
        execution = new_execution(context={"race": n})
        assert fired(store, execution, deadline=T0 + 10)
        eid = execution.execution_id

        def race(i: int, eid: str = eid) -> bool:
            if i == 0:
                return sweeper.end_overdue(eid, "lost", "no heartbeat", T0 + 20)
            if rival == "renew_leases":
                return not worker.renew_leases([eid], T0 + 100)
            return worker.start_step(eid, "late-step", T0 + 20, T0 + 100)

        ended, lived = in_threads(2, race)
        assert ended != lived, (n, ended, lived)
        row = store.get_execution(eid)
        if ended:
            assert (row["status"], row["completed_at"]) == ("lost", utc(T0 + 20))
            assert candidate(store, eid) is None
            assert claim_is_free(store, T0 + 21, {"race": n})
        else:
            assert row["status"] == ("running" if rival == "start_step" else "queued")
            assert deadline_of(store, eid) == T0 + 100
            assert claim_is_free(store, T0 + 21, {"race": n}) is False


def test_concurrent_ends_of_sibling_steps_end_a_requested_end_once(backend: Backend, store: SqlStore) -> None:
    """Parallel branches ending together each see the others' rows: the last one ends it, once."""
    eid = running(store, *[f"b{i}" for i in range(6)])
    assert store.request_end(eid, "failed", "ValueError: b0", T0 + 1, task_id="b0") is False
    stores = [backend.store() for _ in range(5)]
    results = in_threads(5, lambda i: stores[i].end_step(eid, f"b{i + 1}", T0 + 2, T0 + 2 + QUEUED))
    assert results.count(True) == 1, results
    row = store.get_execution(eid)
    assert (row["status"], row["error"]) == ("failed", "ValueError: b0")
    assert claim_is_free(store, T0 + 3) is True


def test_concurrent_ends_of_sibling_steps_leave_the_execution_idle(backend: Backend, store: SqlStore) -> None:
    eid = running(store, *[f"b{i}" for i in range(6)])
    stores = [backend.store() for _ in range(6)]
    assert in_threads(6, lambda i: stores[i].end_step(eid, f"b{i}", T0 + 2, T0 + 2 + QUEUED)) == [False] * 6
    row = candidate(store, eid)
    assert row is not None and row["deadline_at"] == T0 + 2 + QUEUED
    assert {s["state"] for s in row["steps"]} == {"done"}


def test_prune_executions_deletes_their_steps_in_batches(backend: Backend, store: SqlStore) -> None:
    cutoff = D0 + timedelta(days=30)
    old = [running(store, f"s{i}-1", f"s{i}-2", now=T0 + i, context={"n": i}) for i in range(5)]
    for i, eid in enumerate(old):
        status = FINAL_STATUSES[i % len(FINAL_STATUSES)]
        assert store.finish_execution(eid, status, None, D0 + timedelta(hours=i))
    kept = new_execution(context={"n": "kept"})
    assert fired(store, kept) is True
    assert store.start_step(kept.execution_id, "kept-1", T0, T0 + 30)

    assert store.prune_executions(cutoff, batch_size=2, batches=1) == 2
    assert len(store.execution_history("orders")) == 4
    assert store.prune_executions(cutoff, batch_size=2, batches=1) == 2
    assert store.prune_executions(cutoff, batch_size=2) == 1
    assert store.prune_executions(cutoff, batch_size=2, batches=3) == 0
    for eid in old:
        assert step_rows(backend, store, eid) == []
    assert ids_of(store.execution_history("orders")) == [kept.execution_id]
    assert [s["task_id"] for s in step_rows(backend, store, kept.execution_id)] == ["kept-1"]


@pytest.mark.sql_only
def test_start_step_and_renew_leases_are_one_statement(backend: Backend, store: SqlStore) -> None:
    """The hot writes: a step's start is one statement on PostgreSQL (the fencing answer costs one
    round trip); a heartbeat is one UPDATE for all its executions everywhere."""
    ids = [running(store, context={"n": n}) for n in range(4)]
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.lstrip().split(None, 1)[0].upper())

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        assert store.start_step(ids[0], "t1", T0 + 1, T0 + 31) is True
        started = list(statements)
        statements.clear()
        assert store.renew_leases(ids, T0 + 700) == set()
        renewed = list(statements)
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    if backend.name == "postgresql":
        assert started == ["WITH"], started
    else:
        assert [s for s in started if s != "BEGIN"] == ["UPDATE", "INSERT"], started  # one transaction
    assert renewed.count("UPDATE") == 1, renewed
    assert [deadline_of(store, eid) for eid in ids] == [T0 + 700] * 4


# -- executions: reading ----------------------------------------------------------------


def _history_fixture(store: SqlStore) -> list[NewExecution]:
    """Five executions of ``orders`` a minute apart (and one of another trigger), statuses mixed."""
    made = [new_execution(context={"n": i}, started_at=D0 + timedelta(minutes=i)) for i in range(5)]
    for execution in made:
        assert fired(store, execution, claim=False)
    assert fired(store, new_execution("other", started_at=D0 + timedelta(minutes=10)), claim=False)
    store.finish_execution(made[0].execution_id, "succeeded", None, D0 + timedelta(minutes=20))
    store.finish_execution(made[2].execution_id, "failed", "boom", D0 + timedelta(minutes=20))
    assert store.start_step(made[3].execution_id, "t3", T0 + 1200, T0 + 1230)
    return made


def test_execution_history_is_newest_first_and_pages(store: SqlStore) -> None:
    made = _history_fixture(store)
    newest_first = [e.execution_id for e in reversed(made)]

    assert ids_of(store.execution_history("orders")) == newest_first
    assert ids_of(store.execution_history("orders", limit=2)) == newest_first[:2]
    assert ids_of(store.execution_history("orders", limit=2, offset=2)) == newest_first[2:4]
    assert ids_of(store.execution_history("orders", offset=3)) == newest_first[3:]
    assert store.execution_history("orders", limit=2, offset=10) == []
    assert store.execution_history("orders", limit=0) == []
    assert store.execution_history("nobody") == []


def test_execution_history_filters_by_status(store: SqlStore) -> None:
    made = _history_fixture(store)
    ids = [e.execution_id for e in made]

    assert ids_of(store.execution_history("orders", status="queued")) == [ids[4], ids[1]]
    assert ids_of(store.execution_history("orders", status="running")) == [ids[3]]
    assert ids_of(store.execution_history("orders", status="failed")) == [ids[2]]
    assert ids_of(store.execution_history("orders", status="succeeded")) == [ids[0]]
    assert store.execution_history("orders", status="revoked") == []
    assert ids_of(store.execution_history("orders", status="queued", limit=1, offset=1)) == [ids[1]]


def test_execution_history_rejects_an_unknown_status(store: SqlStore) -> None:
    with pytest.raises(ValueError, match="finished"):
        store.execution_history("orders", status="finished")


def test_execution_history_orders_fires_within_one_second(store: SqlStore) -> None:
    """A 100 ms trigger fires several times a second; history is still newest first."""
    made = [
        new_execution(context={"n": i}, started_at=D0 + timedelta(milliseconds=100 * i), execution_id=eid)
        for i, eid in enumerate(["ffffffff-0", "00000000-1", "88888888-2", "11111111-3"])
    ]
    for execution in made:
        assert fired(store, execution, claim=False)
    assert ids_of(store.execution_history("orders")) == [
        e.execution_id for e in reversed(made)
    ]


def test_get_execution_of_an_unknown_id_is_a_key_error(store: SqlStore) -> None:
    with pytest.raises(KeyError, match="no-such-execution"):
        store.get_execution("no-such-execution")


@pytest.mark.sql_only
def test_prune_executions_deletes_old_ended_rows_in_batches(store: SqlStore) -> None:
    cutoff = D0 + timedelta(days=30)
    old = [new_execution(context={"n": i}, started_at=D0 + timedelta(minutes=i)) for i in range(5)]
    recent = new_execution(context={"n": "recent"})
    stuck = new_execution(context={"n": "stuck"}, started_at=D0 - timedelta(days=90))
    for execution in [*old, recent, stuck]:
        assert fired(store, execution, claim=False)
    for i, execution in enumerate(old):
        status = FINAL_STATUSES[i % len(FINAL_STATUSES)]
        assert store.finish_execution(execution.execution_id, status, None, D0 + timedelta(hours=i))
    assert store.finish_execution(recent.execution_id, "succeeded", None, cutoff + timedelta(seconds=1))

    deletes: list[int] = []

    def count_deletes(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM CLOACA_EXECUTIONS"):
            deletes.append(cursor.rowcount)

    event.listen(store.engine, "after_cursor_execute", count_deletes)
    try:
        assert store.prune_executions(cutoff, batch_size=2) == 5
    finally:
        event.remove(store.engine, "after_cursor_execute", count_deletes)
    assert sum(deletes) == 5
    assert max(deletes) <= 2, deletes

    left = {e["execution_id"] for e in store.execution_history("orders")}
    assert left == {recent.execution_id, stuck.execution_id}
    assert store.prune_executions(cutoff, batch_size=2) == 0
    assert store.prune_executions(cutoff + timedelta(seconds=2)) == 1
    assert ids_of(store.execution_history("orders")) == [stuck.execution_id]


# -- datetimes ---------------------------------------------------------------------------


def _touch_every_datetime(store: SqlStore, when: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """A schedule and an execution with every datetime field set from ``when``."""
    now = when.timestamp()
    store.sync_triggers([spec("orders")], now)
    lease = lease_of(store, "orders", now)
    store.finish_poll(lease, PollOutcome(error="x", fired_at=when), now)
    execution = new_execution(started_at=when)
    assert fired(store, execution, now)
    assert store.start_step(execution.execution_id, "t1", now + 1, now + 31)
    store.finish_execution(execution.execution_id, "succeeded", None, when + timedelta(seconds=2))
    return store.get_schedule("orders"), store.get_execution(execution.execution_id)


SCHEDULE_TIMES = ("last_poll_at", "last_fire_at", "last_error_at", "created_at", "updated_at", "next_poll_at")
EXECUTION_TIMES = ("started_at", "running_at", "completed_at")


def test_datetimes_are_timezone_aware_utc(store: SqlStore) -> None:
    schedule, execution = _touch_every_datetime(store, D0)
    for name in SCHEDULE_TIMES:
        assert_utc(schedule[name])
    for name in EXECUTION_TIMES:
        assert_utc(execution[name])
    assert store.list_schedules()[0] == schedule
    assert store.execution_history("orders")[0] == execution
    assert store.sweep_candidates(FAR, 10) == []


def test_datetimes_round_trip_to_the_microsecond(store: SqlStore) -> None:
    when = D0 + timedelta(microseconds=987_654)
    schedule, execution = _touch_every_datetime(store, when)
    assert schedule["last_fire_at"] == when
    assert schedule["last_poll_at"] == when
    assert (execution["started_at"], execution["running_at"], execution["completed_at"]) == (
        when, when + timedelta(seconds=1), when + timedelta(seconds=2)
    )


def test_datetimes_in_another_timezone_are_stored_as_the_same_instant(store: SqlStore) -> None:
    paris = timezone(timedelta(hours=1))
    local = datetime(2025, 11, 28, 13, 0, 34, tzinfo=paris)
    execution = new_execution(started_at=local)
    assert fired(store, execution)
    got = store.get_execution(execution.execution_id)["started_at"]
    assert got == D0
    assert got.utcoffset() == timedelta(0)


# -- unicode and SQL metacharacters ----------------------------------------------------------

AWKWARD_NAMES = [
    "o'; DROP TABLE x;--",
    "日本語のトリガー",
    "rocket 🚀 launch",
    'quote" back\\slash %s %(x)s _%',
]
AWKWARD_CONTEXT = {
    "sql": "o'; DROP TABLE x;--",
    "jp": "日本語",
    "emoji": "🎉🐍",
    "percent": "%s %(name)s 100%",
    "nested": {"é": ["ü", None, 1.5, True, {"k": "\\\"'"}]},
}


def test_awkward_trigger_names_round_trip(store: SqlStore) -> None:
    store.sync_triggers([spec(name) for name in AWKWARD_NAMES], T0)
    assert sorted(row["trigger_name"] for row in store.list_schedules()) == sorted(AWKWARD_NAMES)

    for name in AWKWARD_NAMES:
        assert store.get_schedule(name)["trigger_name"] == name
        store.set_enabled(name, False)
        assert store.get_schedule(name)["enabled"] is False
        store.set_enabled(name, True)
        lease = store.begin_poll(name, T0, LEASE, "tok")
        assert isinstance(lease, PollLease) and lease.trigger_name == name
        outcome = PollOutcome(error=f"failed: {name}", state={"name": name})
        assert store.finish_poll(lease, outcome, T0) is True
        row = store.get_schedule(name)
        assert (row["last_error"], row["state"]) == (f"failed: {name}", {"name": name})
    with pytest.raises(KeyError):
        store.get_schedule("o'")


def test_awkward_trigger_names_are_claimed(store: SqlStore) -> None:
    store.sync_triggers([spec(name) for name in AWKWARD_NAMES], T0)
    assert claimed(store, T0) == sorted(AWKWARD_NAMES)


@pytest.mark.parametrize("name", AWKWARD_NAMES)
def test_awkward_names_and_contexts_round_trip_through_executions(store: SqlStore, name: str) -> None:
    execution = new_execution(name, AWKWARD_CONTEXT)
    assert fired(store, execution) is True
    assert fired(store, new_execution(name, AWKWARD_CONTEXT)) is False
    row = store.get_execution(execution.execution_id)
    assert (row["trigger_name"], row["context"]) == (name, AWKWARD_CONTEXT)
    assert ids_of(store.execution_history(name)) == [execution.execution_id]
    error = f"RuntimeError: {name} — {AWKWARD_CONTEXT['jp']} {AWKWARD_CONTEXT['emoji']}"
    assert store.finish_execution(execution.execution_id, "failed", error, D0 + timedelta(seconds=1))
    assert store.get_execution(execution.execution_id)["error"] == error
    assert fired(store, new_execution(name, AWKWARD_CONTEXT)) is True


# Names with leading or trailing whitespace never reach the store: @trigger refuses them
# (MariaDB's PAD SPACE collations would compare "orders" and "orders " equal).
@pytest.mark.parametrize(("one", "other"), [("orders", "Orders"), ("cafe", "café"), ("orders", "orders_")])
def test_trigger_names_are_compared_exactly(store: SqlStore, one: str, other: str) -> None:
    store.sync_triggers([spec(one, 5.0, "first"), spec(other, 7.0, "second")], T0)
    assert sorted(row["trigger_name"] for row in store.list_schedules()) == sorted([one, other])
    assert store.get_schedule(other)["trigger_name"] == other
    assert store.get_schedule(other)["workflow"] == "second"
    assert fired(store, new_execution(one)) is True
    assert store.execution_history(other) == []


# -- backend settings the store must not depend on -------------------------------------------------


def test_postgresql_session_timezone_does_not_matter(pg_schema: str) -> None:
    """Connections whose TimeZone is not UTC still store and return the same UTC instants."""
    options = f"-csearch_path={pg_schema} -ctimezone=Asia/Tokyo"
    engine = create_engine(POSTGRES_URL, connect_args={"options": options})
    store = SqlStore(engine)
    try:
        store.ensure_schema()
        with engine.connect() as conn:
            assert conn.execute(text("SHOW timezone")).scalar() == "Asia/Tokyo"
        when = D0 + timedelta(microseconds=654_321)
        schedule, execution = _touch_every_datetime(store, when)
        assert (schedule["last_fire_at"], execution["started_at"]) == (when, when)
        for name in SCHEDULE_TIMES:
            assert_utc(schedule[name])
        for name in EXECUTION_TIMES:
            assert_utc(execution[name])
    finally:
        engine.dispose()


def test_mariadb_unicode_in_a_database_whose_default_charset_is_latin1() -> None:
    need_mariadb()
    database = new_name()
    admin = create_engine(MARIADB_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE `{database}` CHARACTER SET latin1 COLLATE latin1_swedish_ci"))
    store = SqlStore(make_url(MARIADB_URL).set(database=database).render_as_string(hide_password=False))
    try:
        store.ensure_schema()
        store.sync_triggers([spec(name) for name in AWKWARD_NAMES], T0)
        assert sorted(row["trigger_name"] for row in store.list_schedules()) == sorted(AWKWARD_NAMES)
        execution = new_execution(AWKWARD_NAMES[2], AWKWARD_CONTEXT)
        assert fired(store, execution)
        assert store.finish_execution(execution.execution_id, "failed", "💥 失敗", D0)
        assert store.get_execution(execution.execution_id)["error"] == "💥 失敗"
    finally:
        store.close()
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{database}`"))
        admin.dispose()
