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
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
from sqlalchemy import create_engine, event, select, text, update
from sqlalchemy.engine import make_url

from cloaca_celery.sqlstore import SqlStore, claims, executions
from cloaca_celery.store import (
    FINAL_STATUSES,
    DuePoll,
    NewExecution,
    PollLease,
    PollOutcome,
    PollRefusal,
    Store,
    TriggerSpec,
)
from tests.contract.conftest import Backend, new_name
from tests.services import MARIADB_URL, POSTGRES_URL, need_mariadb

T0 = 1_764_331_234.5  # 2025-11-28T12:00:34.5Z
D0 = datetime(2025, 11, 28, 12, 0, 34, tzinfo=timezone.utc)
LEASE = 60.0
UTC = timezone.utc

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


def fired(store: SqlStore, execution: NewExecution, now: float = T0, claim_for: float | None = 300.0) -> bool:
    return store.record_fire(execution, None if claim_for is None else now + claim_for, now)


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


def test_claim_due_far_behind_moves_to_now_plus_interval(store: SqlStore) -> None:
    """After an outage there is no burst: one claim, then the next slot is one interval away."""
    store.sync_triggers([spec("orders", 5.0)], T0)
    assert claimed(store, T0 + 1000.25) == ["orders"]
    assert store.get_schedule("orders")["next_poll_at"] == utc(T0 + 1005.25)
    assert claimed(store, T0 + 1000.25) == []
    assert claimed(store, T0 + 1005) == []
    assert claimed(store, T0 + 1005.25) == ["orders"]


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
    assert claimed(store, T0 + 59) == ["idle"]  # next slot of idle: T0 + 64
    assert claimed(store, T0 + 61) == ["busy"]  # the lease ended at T0 + 60


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
    [behind] = store.claim_due(T0 + 100.25, 10)  # far behind: the slot is now
    assert (behind.due, behind.next_due) == (T0 + 100.25, T0 + 105.25)


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
    assert fired(store, first, claim_for=None) is True
    assert fired(store, second, T0 + 1, claim_for=None) is True

    history = store.execution_history("orders")
    assert {e["execution_id"] for e in history} == {first.execution_id, second.execution_id}
    assert {e["status"] for e in history} == {"queued"}
    assert store.active_executions(D0 + timedelta(days=1), 10)[0]["status"] == "queued"


def test_record_fire_writes_the_execution_row(store: SqlStore) -> None:
    execution = new_execution(context={"order": 42, "items": [1, 2]})
    assert fired(store, execution) is True
    row = store.get_execution(execution.execution_id)
    assert row == {
        "execution_id": execution.execution_id, "trigger_name": "orders", "workflow": "wf",
        "context": {"order": 42, "items": [1, 2]}, "context_hash": execution.context_hash,
        "status": "queued", "task_ids": execution.task_ids, "started_at": D0, "running_at": None,
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


def test_an_expired_claim_is_taken_over(store: SqlStore) -> None:
    first = new_execution()
    assert store.record_fire(first, T0 + 60, T0) is True
    assert store.record_fire(new_execution(), T0 + 120, T0 + 59.5) is False

    takeover = new_execution()
    assert store.record_fire(takeover, T0 + 300, T0 + 60.5) is True
    assert store.get_execution(takeover.execution_id)["status"] == "queued"
    assert store.record_fire(new_execution(), T0 + 400, T0 + 299) is False  # the new claim holds
    assert store.get_execution(first.execution_id)["status"] == "queued"  # the store does not end it

    # The late end of the first execution must not release the claim of the second.
    assert store.finish_execution(first.execution_id, "lost", "gone", D0 + timedelta(seconds=70)) is True
    assert store.record_fire(new_execution(), T0 + 400, T0 + 100) is False


def test_concurrent_takeover_of_an_expired_claim_has_one_winner(backend: Backend, store: SqlStore) -> None:
    assert store.record_fire(new_execution(), T0 + 60, T0) is True
    stores = [backend.store() for _ in range(8)]
    attempts = [new_execution() for _ in range(8)]

    results = in_threads(8, lambda i: stores[i].record_fire(attempts[i], T0 + 400, T0 + 100))
    assert results.count(True) == 1, results
    winner = attempts[results.index(True)]
    assert len(store.execution_history("orders")) == 2
    assert store.get_execution(winner.execution_id)["status"] == "queued"
    assert store.finish_execution(winner.execution_id, "succeeded", None, D0 + timedelta(minutes=2))
    assert store.record_fire(new_execution(), T0 + 500, T0 + 130) is True


@pytest.mark.sql_only
def test_a_claim_whose_execution_ended_is_taken_over(store: SqlStore) -> None:
    """A claim left behind by an execution that ended without releasing it does not block."""
    first = new_execution()
    assert fired(store, first) is True
    with store.engine.begin() as conn:  # the end was recorded, the release was not
        conn.execute(
            update(executions).where(executions.c.execution_id == first.execution_id)
            .values(status="succeeded", completed_at=D0)
        )
    second = new_execution()
    assert fired(store, second, T0 + 1) is True
    assert fired(store, new_execution(), T0 + 2) is False


def test_concurrent_fires_of_the_same_context_claim_once(backend: Backend, store: SqlStore) -> None:
    stores = [backend.store() for _ in range(8)]
    attempts = [new_execution() for _ in range(8)]

    results = in_threads(8, lambda i: fired(stores[i], attempts[i]))
    assert results.count(True) == 1, results
    winner = attempts[results.index(True)]
    assert ids_of(store.execution_history("orders")) == [winner.execution_id]


# -- executions: status changes --------------------------------------------------------


def test_mark_running_only_from_queued(store: SqlStore) -> None:
    execution = new_execution()
    assert fired(store, execution) is True
    at = D0 + timedelta(seconds=2)
    assert store.mark_running(execution.execution_id, at) is True
    row = store.get_execution(execution.execution_id)
    assert (row["status"], row["running_at"]) == ("running", at)
    assert store.mark_running(execution.execution_id, at + timedelta(seconds=1)) is False
    assert store.get_execution(execution.execution_id)["running_at"] == at

    assert store.finish_execution(execution.execution_id, "succeeded", None, at + timedelta(seconds=3))
    assert store.mark_running(execution.execution_id, at + timedelta(seconds=4)) is False
    assert store.get_execution(execution.execution_id)["status"] == "succeeded"
    assert store.mark_running("no-such-execution", at) is False


def test_finish_execution_is_idempotent(store: SqlStore) -> None:
    execution = new_execution()
    assert fired(store, execution) is True
    store.mark_running(execution.execution_id, D0 + timedelta(seconds=1))
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


# -- executions: reading ----------------------------------------------------------------


def _history_fixture(store: SqlStore) -> list[NewExecution]:
    """Five executions of ``orders`` a minute apart (and one of another trigger), statuses mixed."""
    made = [new_execution(context={"n": i}, started_at=D0 + timedelta(minutes=i)) for i in range(5)]
    for execution in made:
        assert fired(store, execution, claim_for=None)
    assert fired(store, new_execution("other", started_at=D0 + timedelta(minutes=10)), claim_for=None)
    store.finish_execution(made[0].execution_id, "succeeded", None, D0 + timedelta(minutes=20))
    store.finish_execution(made[2].execution_id, "failed", "boom", D0 + timedelta(minutes=20))
    store.mark_running(made[3].execution_id, D0 + timedelta(minutes=20))
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
        assert fired(store, execution, claim_for=None)
    assert ids_of(store.execution_history("orders")) == [
        e.execution_id for e in reversed(made)
    ]


def test_get_execution_of_an_unknown_id_is_a_key_error(store: SqlStore) -> None:
    with pytest.raises(KeyError, match="no-such-execution"):
        store.get_execution("no-such-execution")


def test_active_executions_filters_and_is_oldest_first(store: SqlStore) -> None:
    made = _history_fixture(store)  # 0 succeeded, 1 queued, 2 failed, 3 running, 4 queued
    other = store.execution_history("other")[0]["execution_id"]
    ids = [e.execution_id for e in made]
    far = D0 + timedelta(days=1)

    assert ids_of(store.active_executions(far, 100)) == [ids[1], ids[3], ids[4], other]
    assert ids_of(store.active_executions(far, 2)) == [ids[1], ids[3]]
    assert ids_of(store.active_executions(D0 + timedelta(minutes=3), 100)) == [ids[1]]  # strictly before
    assert ids_of(store.active_executions(D0 + timedelta(minutes=3, seconds=1), 100)) == [ids[1], ids[3]]
    assert store.active_executions(D0, 100) == []
    running = store.active_executions(far, 100)[1]
    assert running["status"] == "running"
    assert running["task_ids"] == made[3].task_ids


@pytest.mark.sql_only
def test_prune_executions_deletes_old_ended_rows_in_batches(store: SqlStore) -> None:
    cutoff = D0 + timedelta(days=30)
    old = [new_execution(context={"n": i}, started_at=D0 + timedelta(minutes=i)) for i in range(5)]
    recent = new_execution(context={"n": "recent"})
    stuck = new_execution(context={"n": "stuck"}, started_at=D0 - timedelta(days=90))
    for execution in [*old, recent, stuck]:
        assert fired(store, execution, claim_for=None)
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
    store.mark_running(execution.execution_id, when + timedelta(seconds=1))
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
    assert store.active_executions(D0 + timedelta(days=1), 10) == []


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
