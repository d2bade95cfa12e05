"""The ``Store`` contract of overlap policies and dedup keys (issue 14), on every backend.

Schedules keep their overlap policy; a fire's claim is keyed by its work key
(``dedup_hash``, the context hash by default); pending fires wait behind the
execution that holds their key (``hold_pending``), and are started by whoever
sees it end (``next_pending``, ``start_pending``) or by the sweep
(``orphan_pending``), exactly once. Fixtures and helpers as in
``test_store_contract.py``.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, update

from cloaca_celery.sqlstore import SqlStore, executions
from cloaca_celery.store import Held, NewExecution, PendingFire, TriggerSpec
from tests.contract.conftest import Backend
from tests.contract.test_store_contract import (
    QUEUED,
    T0,
    digest,
    end_behind_the_store,
    fired,
    ids_of,
    in_threads,
    new_execution,
    utc,
)

KEY = digest({"order": 1})
"""The work key of the tests' holder: ``dedup_key=["order"]`` of ``{"order": 1, ...}``."""

GRACE = 0.3
"""Seconds a racer is given to reach the lock it must wait for, in the forced interleavings
(if it has not reached it by then the interleaving is a different one, and the invariant
asserted still holds)."""


def keyed(context: dict[str, Any], dedup_hash: str = KEY, trigger: str = "orders") -> NewExecution:
    """A fire of ``context`` whose work key is ``dedup_hash``."""
    return dataclasses.replace(new_execution(trigger, context), dedup_hash=dedup_hash)


def pending_of(
    context: dict[str, Any], dedup_hash: str = KEY, created_at: float = T0, trigger: str = "orders",
    pending_id: str | None = None,
) -> PendingFire:
    return PendingFire(
        pending_id=pending_id or str(uuid.uuid4()), trigger_name=trigger, dedup_hash=dedup_hash,
        context=context, context_hash=digest(context), created_at=created_at,
    )


def execution_of(pending: PendingFire) -> NewExecution:
    """The execution that starts a pending fire."""
    return keyed(pending.context, pending.dedup_hash, pending.trigger_name)


def hold(store: SqlStore, pending: PendingFire, replace: bool = False, max_pending: int = 100) -> Held:
    return store.hold_pending(pending, replace=replace, max_pending=max_pending)


def holder_of(store: SqlStore, context: dict[str, Any] | None = None, dedup_hash: str = KEY) -> NewExecution:
    """An active execution holding the key ``dedup_hash``."""
    execution = keyed(context or {"order": 1, "seen": 0}, dedup_hash)
    assert fired(store, execution) is True
    return execution


def start(store: SqlStore, pending: PendingFire, now: float = T0 + 10) -> NewExecution | None:
    """``start_pending`` as the engine calls it; the execution if it started."""
    execution = execution_of(pending)
    started = store.start_pending(pending.pending_id, execution, now=now, deadline=now + QUEUED)
    return execution if started else None


def end(store: SqlStore, execution: NewExecution, seconds: int = 5) -> bool:
    return store.finish_execution(execution.execution_id, "succeeded", None, utc(T0 + seconds))


# -- schedules: the overlap policy --------------------------------------------------


def test_sync_writes_the_overlap_policy(store: SqlStore) -> None:
    store.sync_triggers([
        TriggerSpec("skipping", "wf", 5.0), TriggerSpec("old_style", "wf", 5.0, True),
        TriggerSpec("buffering", "wf", 5.0, overlap="buffer_all"),
        TriggerSpec("cancelling", "wf", 5.0, overlap="terminate_other"),
    ], T0)
    rows = {row["trigger_name"]: (row["overlap"], row["allow_concurrent"]) for row in store.list_schedules()}
    assert rows == {
        "skipping": ("skip", False), "old_style": ("allow", True), "buffering": ("buffer_all", False),
        "cancelling": ("terminate_other", False),
    }


def test_a_changed_overlap_policy_refreshes_the_row(store: SqlStore) -> None:
    store.sync_triggers([TriggerSpec("orders", "wf", 5.0, overlap="buffer_one")], T0)
    store.claim_due(T0 + 10, 10)  # the slot moves on
    store.sync_triggers([TriggerSpec("orders", "wf", 5.0, overlap="buffer_one")], T0 + 20)
    unchanged = store.get_schedule("orders")
    assert unchanged["next_poll_at"] == utc(T0 + 15)
    store.sync_triggers([TriggerSpec("orders", "wf", 5.0, overlap="allow")], T0 + 30)
    changed = store.get_schedule("orders")
    assert (changed["overlap"], changed["allow_concurrent"]) == ("allow", True)
    assert changed["next_poll_at"] == utc(T0 + 30)
    store.sync_triggers([TriggerSpec("orders", "wf", 5.0)], T0 + 40)
    assert (store.get_schedule("orders")["overlap"], store.get_schedule("orders")["allow_concurrent"]) == (
        "skip", False
    )


# -- executions: the work key ----------------------------------------------------------


def test_the_claim_is_taken_on_the_work_key(store: SqlStore) -> None:
    first = keyed({"order": 1, "seen": 0})
    assert fired(store, first) is True
    assert fired(store, keyed({"order": 1, "seen": 1}), T0 + 1) is False  # same work, other fields differ
    assert fired(store, keyed({"order": 1, "seen": 0}, digest({"order": 2})), T0 + 2) is True
    assert fired(store, new_execution(context={"order": 1, "seen": 1}), T0 + 3) is True  # whole context
    assert end(store, first)
    assert fired(store, keyed({"order": 1, "seen": 1}), T0 + 6) is True


def test_execution_dicts_carry_the_work_key(store: SqlStore) -> None:
    with_key, without = keyed({"order": 1, "seen": 0}), new_execution(context={"order": 5})
    assert fired(store, with_key) is True
    assert fired(store, without, claim=False) is True
    assert store.get_execution(with_key.execution_id)["dedup_hash"] == KEY
    assert store.get_execution(without.execution_id)["dedup_hash"] == without.context_hash
    assert {row["dedup_hash"] for row in store.execution_history("orders")} == {KEY, without.context_hash}


def test_rows_written_before_dedup_keys_read_their_context_hash(backend: Backend, store: SqlStore) -> None:
    execution = new_execution()
    assert fired(store, execution) is True
    if backend.name == "django":
        from django_cloaca.models import TriggerExecution

        TriggerExecution.objects.filter(pk=execution.execution_id).update(dedup_hash=None)
    else:
        with store.engine.begin() as conn:
            conn.execute(update(executions).values(dedup_hash=None))
    assert store.get_execution(execution.execution_id)["dedup_hash"] == execution.context_hash
    [candidate] = store.sweep_candidates(T0 + 10**7, 10)
    assert candidate["dedup_hash"] == execution.context_hash


# -- pending fires: hold -------------------------------------------------------------------


def test_a_fire_with_no_claim_in_its_way_is_free(store: SqlStore) -> None:
    assert hold(store, pending_of({"order": 1, "seen": 1})) == Held("free")
    assert store.pending_fires("orders") == []
    assert store.next_pending("orders", KEY) is None


@pytest.mark.parametrize("remove", [False, True], ids=["ended", "missing"])
def test_a_fire_whose_holder_is_not_active_is_free(backend: Backend, store: SqlStore, remove: bool) -> None:
    holder = holder_of(store)
    end_behind_the_store(backend, store, holder.execution_id, remove=remove)
    assert hold(store, pending_of({"order": 1, "seen": 1})) == Held("free")
    assert store.pending_fires("orders") == []


def test_a_fire_behind_an_active_holder_is_pending(backend: Backend, store: SqlStore) -> None:
    holder = holder_of(store)
    context = {"order": 1, "seen": 1, "note": "Grüße \u2603", "lines": [{"sku": "A-1", "qty": 2}]}
    waiting = pending_of(context, created_at=T0 + 0.125)
    assert hold(store, waiting) == Held("pending", holder.execution_id, tuple(holder.task_ids), 0)
    assert backend.store().pending_fires("orders") == [waiting]
    assert store.next_pending("orders", KEY) == waiting
    assert store.next_pending("orders", digest({"order": 2})) is None
    assert store.next_pending("invoices", KEY) is None
    assert ids_of(store.execution_history("orders")) == [holder.execution_id]  # no execution row yet


def test_pending_fires_are_kept_per_key(store: SqlStore) -> None:
    first, second = holder_of(store), holder_of(store, {"order": 2}, digest({"order": 2}))
    other_trigger = keyed({"order": 1}, KEY, trigger="invoices")
    assert fired(store, other_trigger) is True
    one = pending_of({"order": 1, "seen": 1})
    two = pending_of({"order": 2, "seen": 1}, digest({"order": 2}), T0 + 1)
    three = pending_of({"order": 1, "seen": 1}, trigger="invoices")
    assert hold(store, one, replace=True).holder == first.execution_id
    assert hold(store, two, replace=True).holder == second.execution_id
    assert hold(store, three, replace=True).holder == other_trigger.execution_id
    assert store.pending_fires("orders") == [one, two]
    assert store.pending_fires("invoices") == [three]
    assert (store.next_pending("orders", KEY), store.next_pending("invoices", KEY)) == (one, three)


def test_buffered_fires_keep_their_order_and_drop_the_oldest_past_the_limit(store: SqlStore) -> None:
    holder = holder_of(store)
    fires = [pending_of({"order": 1, "seen": n}, created_at=T0 + n) for n in range(1, 6)]
    dropped = [hold(store, fire, max_pending=3).dropped for fire in fires]
    assert dropped == [0, 0, 0, 1, 1]
    assert store.pending_fires("orders") == fires[2:]
    assert store.next_pending("orders", KEY) == fires[2]
    assert hold(store, pending_of({"order": 1, "seen": 6}, created_at=T0 + 6), max_pending=1) == Held(
        "pending", holder.execution_id, tuple(holder.task_ids), 3
    )
    assert [fire.context["seen"] for fire in store.pending_fires("orders")] == [6]


def test_a_fire_older_than_the_buffer_is_itself_the_one_dropped(store: SqlStore) -> None:
    holder_of(store)
    newer = [pending_of({"order": 1, "seen": n}, created_at=T0 + n) for n in (5, 6)]
    for fire in newer:
        assert hold(store, fire, max_pending=2).dropped == 0
    late = pending_of({"order": 1, "seen": 1}, created_at=T0 + 1)  # read the clock before the others
    held = hold(store, late, max_pending=2)
    assert (held.status, held.dropped) == ("pending", 1)
    assert store.pending_fires("orders") == newer


def test_a_replacing_fire_leaves_only_itself(store: SqlStore) -> None:
    holder_of(store)
    fires = [pending_of({"order": 1, "seen": n}, created_at=T0 + n) for n in range(1, 4)]
    assert [hold(store, fire, replace=True).dropped for fire in fires] == [0, 1, 1]
    assert store.pending_fires("orders") == [fires[-1]]
    assert hold(store, pending_of({"order": 1, "seen": 9}, created_at=T0 + 9), max_pending=5).dropped == 0
    assert len(store.pending_fires("orders")) == 2
    assert hold(store, pending_of({"order": 1, "seen": 10}, created_at=T0 + 10), replace=True).dropped == 2


def test_pending_fires_of_one_instant_are_ordered_by_id(store: SqlStore) -> None:
    holder_of(store)
    fires = [pending_of({"order": 1, "seen": n}, pending_id=f"p-{n}") for n in (3, 1, 2)]
    for fire in fires:
        hold(store, fire)
    assert [fire.pending_id for fire in store.pending_fires("orders")] == ["p-1", "p-2", "p-3"]
    assert store.next_pending("orders", KEY) == fires[1]


@pytest.mark.parametrize("max_pending", [0, -1, True, 1.5])
def test_hold_pending_needs_a_limit_of_at_least_one(store: SqlStore, max_pending: Any) -> None:
    holder_of(store)
    with pytest.raises(ValueError, match="max_pending"):
        hold(store, pending_of({"order": 1, "seen": 1}), max_pending=max_pending)
    assert store.pending_fires("orders") == []


# -- pending fires: start --------------------------------------------------------------------


def test_the_ender_starts_the_oldest_pending_fire(backend: Backend, store: SqlStore) -> None:
    holder = holder_of(store)
    first, second = (pending_of({"order": 1, "seen": n}, created_at=T0 + n) for n in (1, 2))
    hold(store, first)
    hold(store, second)
    assert end(store, holder)

    ender = backend.store()
    oldest = ender.next_pending("orders", KEY)
    assert oldest == first
    started = start(ender, oldest, now=T0 + 10)
    assert started is not None
    row = store.get_execution(started.execution_id)
    assert (row["status"], row["context"], row["dedup_hash"]) == ("queued", first.context, KEY)
    assert row["context_hash"] == first.context_hash
    [candidate] = store.sweep_candidates(T0 + 10**7, 10)
    assert (candidate["execution_id"], candidate["deadline_at"]) == (started.execution_id, T0 + 10 + QUEUED)
    assert store.pending_fires("orders") == [second]
    assert fired(store, keyed({"order": 1, "seen": 3}), T0 + 11) is False  # the started one holds the key
    assert hold(store, pending_of({"order": 1, "seen": 3}, created_at=T0 + 11)).holder == started.execution_id


def test_a_pending_fire_starts_once(store: SqlStore) -> None:
    holder = holder_of(store)
    waiting = pending_of({"order": 1, "seen": 1})
    hold(store, waiting)
    assert end(store, holder)
    assert start(store, waiting) is not None
    late = execution_of(waiting)
    assert store.start_pending(waiting.pending_id, late, now=T0 + 11, deadline=T0 + 11 + QUEUED) is False
    with pytest.raises(KeyError):
        store.get_execution(late.execution_id)
    assert len(store.execution_history("orders")) == 2


def test_a_pending_fire_does_not_start_while_the_key_is_held(store: SqlStore) -> None:
    holder = holder_of(store)
    waiting = pending_of({"order": 1, "seen": 1})
    hold(store, waiting)
    refused = execution_of(waiting)
    assert store.start_pending(waiting.pending_id, refused, now=T0 + 1, deadline=T0 + 1 + QUEUED) is False
    with pytest.raises(KeyError):
        store.get_execution(refused.execution_id)
    assert store.pending_fires("orders") == [waiting]
    assert end(store, holder)
    assert start(store, waiting) is not None


def test_a_refused_start_leaves_the_claim_free(store: SqlStore) -> None:
    """A start of a pending fire that is gone writes nothing: not even the claim it took first."""
    assert start(store, pending_of({"order": 1, "seen": 1})) is None
    assert store.execution_history("orders") == []
    assert fired(store, keyed({"order": 1, "seen": 2}), T0 + 20) is True


def test_concurrent_starts_of_one_pending_fire_have_one_winner(backend: Backend, store: SqlStore) -> None:
    holder = holder_of(store)
    waiting = pending_of({"order": 1, "seen": 1})
    hold(store, waiting)
    assert end(store, holder)
    stores = [backend.store() for _ in range(8)]
    attempts = [execution_of(waiting) for _ in range(8)]

    results = in_threads(8, lambda i: stores[i].start_pending(
        waiting.pending_id, attempts[i], now=T0 + 10, deadline=T0 + 10 + QUEUED
    ))
    assert results.count(True) == 1, results
    winner = attempts[results.index(True)]
    assert set(ids_of(store.execution_history("orders"))) == {winner.execution_id, holder.execution_id}
    assert store.pending_fires("orders") == []


def test_concurrent_starts_of_a_keys_pending_fires_start_one(backend: Backend, store: SqlStore) -> None:
    """Two enders (or an ender and the sweep) starting different pending fires of one key: one runs."""
    holder = holder_of(store)
    fires = [pending_of({"order": 1, "seen": n}, created_at=T0 + n) for n in range(1, 5)]
    for fire in fires:
        hold(store, fire)
    assert end(store, holder)
    stores = [backend.store() for _ in fires]
    attempts = [execution_of(fire) for fire in fires]

    results = in_threads(len(fires), lambda i: stores[i].start_pending(
        fires[i].pending_id, attempts[i], now=T0 + 10, deadline=T0 + 10 + QUEUED
    ))
    assert results.count(True) == 1, results
    assert len(store.pending_fires("orders")) == len(fires) - 1
    assert len(store.execution_history("orders", status="queued")) == 1


def test_replacing_holds_and_refused_starts_of_one_key_together_neither_fail_nor_lose(
    backend: Backend, store: SqlStore
) -> None:
    """Starts while another execution holds the key (an ender late, the sweep) beside holds that
    replace the key's pending fires: each takes the claim before it touches a pending row, so none
    waits for another in a circle, and the latest hold's fire is the one left."""
    holder = holder_of(store)
    for round_ in range(3):
        queued = [pending_of({"order": 1, "seen": n}, created_at=T0 + n) for n in range(4)]
        for n, fire in enumerate(queued):
            hold(store, fire, replace=n == 0)  # the first replaces what the round before left
        new = [pending_of({"order": 1, "seen": 10 + n}, created_at=T0 + 10 + n) for n in range(4)]
        stores = [backend.store() for _ in range(8)]

        def race(
            i: int, queued: list[PendingFire] = queued, new: list[PendingFire] = new,
            stores: list[SqlStore] = stores,
        ) -> Any:
            if i % 2:
                return start(stores[i], queued[i // 2])
            return hold(stores[i], new[i // 2], replace=True)

        results = in_threads(8, race)
        assert results[1::2] == [None] * 4, round_
        assert {held.holder for held in results[::2]} == {holder.execution_id}
        [left] = store.pending_fires("orders")
        assert left in new
        assert sum(held.dropped for held in results[::2]) == len(queued) + len(new) - 1


# -- pending fires: found by the sweep, listed ----------------------------------------------------


def test_orphan_pending_are_the_keys_no_active_execution_holds(backend: Backend, store: SqlStore) -> None:
    keys = {n: digest({"order": n}) for n in range(1, 5)}
    held_on = holder_of(store, {"order": 1}, keys[1])
    ended = holder_of(store, {"order": 2}, keys[2])
    behind = holder_of(store, {"order": 3}, keys[3])
    holder_of(store, {"order": 4}, keys[4])
    for n, created in ((4, 1.0), (1, 2.0), (2, 3.0), (3, 4.0), (2, 0.5)):
        hold(store, pending_of({"order": n, "seen": created}, keys[n], T0 + created))
    assert store.orphan_pending(10) == []
    assert end(store, ended)
    end_behind_the_store(backend, store, behind.execution_id)
    assert store.orphan_pending(10) == [("orders", keys[2]), ("orders", keys[3])]  # oldest fire first
    assert store.orphan_pending(1) == [("orders", keys[2])]
    assert end(store, held_on)
    assert store.orphan_pending(10) == [("orders", keys[2]), ("orders", keys[1]), ("orders", keys[3])]


def test_pending_fires_lists_a_triggers_fires_oldest_first(store: SqlStore) -> None:
    holder_of(store)
    other = digest({"order": 2})
    holder_of(store, {"order": 2}, other)
    fires = [
        pending_of({"order": 1, "seen": 1}, created_at=T0 + 3), pending_of({"order": 2}, other, T0 + 1),
        pending_of({"order": 1, "seen": 2}, created_at=T0 + 2),
    ]
    for fire in fires:
        hold(store, fire)
    assert store.pending_fires("orders") == [fires[1], fires[2], fires[0]]
    assert store.pending_fires("invoices") == []


# -- pending fires and the end of their holder, racing ---------------------------------------------


def inserts_pending(statement: str) -> bool:
    return _words(statement).startswith("INSERT INTO CLOACA_PENDING")


def deletes_claims(statement: str) -> bool:
    return _words(statement).startswith("DELETE FROM CLOACA_CLAIMS")


def _words(statement: str) -> str:
    return " ".join(statement.replace('"', "").replace("`", "").upper().split())


@contextmanager
def paused(
    backend: Backend, store: SqlStore, at: Callable[[str], bool], *, after: bool,
    reached: threading.Event, resume: threading.Event,
) -> Iterator[None]:
    """While the block runs (in the thread using ``store``), the first statement ``at`` matches
    waits for ``resume`` before it is sent (or, ``after``, before the next one), ``reached`` set."""

    def wait(statement: str) -> None:
        if at(statement) and not reached.is_set():
            reached.set()
            assert resume.wait(60), "never resumed"

    if backend.name == "django":
        from django.db import connections

        def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            if not after:
                wait(sql)
            result = execute(sql, params, many, context)
            if after:
                wait(sql)
            return result

        with connections[store.using].execute_wrapper(wrapper):  # type: ignore[attr-defined]
            yield
        return

    def listener(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        wait(statement)

    name = "after_cursor_execute" if after else "before_cursor_execute"
    event.listen(store.engine, name, listener)
    try:
        yield
    finally:
        event.remove(store.engine, name, listener)


class Racer(threading.Thread):
    """Runs ``work`` in a thread of its own (closing its Django connection after); ``called`` is set
    just before ``work`` starts."""

    def __init__(self, work: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.work, self.called = work, threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.called.set()
            self.result = self.work()
        except BaseException as exc:  # noqa: BLE001 - re-raised by outcome()
            self.error = exc
        finally:
            from django.db import connections

            connections.close_all()

    def outcome(self) -> Any:
        self.join(timeout=120)
        assert not self.is_alive(), "a racer hung"
        if self.error is not None:
            raise self.error
        return self.result


def the_second_waits(
    backend: Backend, first_store: SqlStore, at: Callable[[str], bool], *, after: bool,
    first: Callable[[], Any], second: Callable[[], Any], because: str,
) -> tuple[Any, Any]:
    """Run ``first`` (on ``first_store``) until the statement ``at`` matches and pause it there,
    its locks held; start ``second``, which must still be waiting :data:`GRACE` seconds later
    (``because`` says why); let ``first`` go on. Their results."""
    reached, resume = threading.Event(), threading.Event()

    def first_paused() -> Any:
        with paused(backend, first_store, at, after=after, reached=reached, resume=resume):
            return first()

    leader = Racer(first_paused)
    leader.start()
    try:
        assert reached.wait(60)
        follower = Racer(second)
        follower.start()
        assert follower.called.wait(60)
        follower.join(GRACE)
        assert follower.is_alive(), because
    finally:
        resume.set()
    return leader.outcome(), follower.outcome()


def test_an_end_waits_for_a_hold_under_way_and_then_sees_its_fire(backend: Backend, store: SqlStore) -> None:
    """hold_pending locked the claim first: the holder's end waits for it, and the ender's
    next_pending then shows the fire."""
    holder = holder_of(store)
    holding, ending = backend.store(), backend.store()
    waiting = pending_of({"order": 1, "seen": 1})
    held, (ended, seen) = the_second_waits(
        backend, holding, inserts_pending, after=False, first=lambda: hold(holding, waiting),
        second=lambda: (end(ending, holder), ending.next_pending("orders", KEY)),
        because="the end did not wait for the hold that had locked the claim",
    )
    assert held == Held("pending", holder.execution_id, tuple(holder.task_ids), 0)
    assert (ended, seen) == (True, waiting)
    assert start(store, waiting) is not None


def test_a_hold_waits_for_an_end_under_way_and_then_finds_the_key_free(
    backend: Backend, store: SqlStore
) -> None:
    """The holder's end deleted the claim first: the hold waits for it, then writes nothing."""
    holder = holder_of(store)
    holding, ending = backend.store(), backend.store()
    ended, held = the_second_waits(
        backend, ending, deletes_claims, after=True, first=lambda: end(ending, holder),
        second=lambda: hold(holding, pending_of({"order": 1, "seen": 1})),
        because="the hold did not wait for the end that had deleted the claim",
    )
    assert (ended, held) == (True, Held("free"))
    assert store.pending_fires("orders") == []


ROUNDS = 12


def test_a_fire_held_while_its_holder_ends_is_never_lost(backend: Backend, store: SqlStore) -> None:
    """Released together, over and over: the fire is either free (nothing written) or pending and
    seen by the ender's next_pending; never recorded where no ender looks."""
    holding, ending = backend.store(), backend.store()
    for n in range(ROUNDS):
        key = digest({"round": n})
        holder = holder_of(store, {"round": n}, key)
        waiting = pending_of({"round": n, "seen": 1}, key)

        def race(
            i: int, holder: NewExecution = holder, waiting: PendingFire = waiting, key: str = key
        ) -> Any:
            if i == 0:
                return hold(holding, waiting)
            return end(ending, holder), ending.next_pending("orders", key)

        held, (ended, seen) = in_threads(2, race)
        assert ended is True
        if held.status == "free":
            assert seen is None
        else:
            assert held == Held("pending", holder.execution_id, tuple(holder.task_ids), 0)
            assert seen == waiting
            started = start(store, waiting)
            assert started is not None
            assert end(store, started)
        assert store.pending_fires("orders") == []
        assert store.orphan_pending(10) == []
