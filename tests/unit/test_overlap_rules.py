"""The store rules of overlap policies and dedup keys (cloaca_celery.store), without a database."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from cloaca_celery.store import (
    OVERLAP_POLICIES,
    NewExecution,
    PendingFire,
    TriggerSpec,
    claim_key,
    claim_row,
    claims_by_context,
    execution_row,
    pending_to_drop,
)

D0 = datetime(2025, 11, 28, 12, 0, 34, tzinfo=timezone.utc)


@pytest.mark.parametrize("overlap", OVERLAP_POLICIES)
def test_allow_concurrent_is_what_overlap_allow_means(overlap: str) -> None:
    spec = TriggerSpec("orders", "wf", 5.0, overlap=overlap)
    assert (spec.overlap, spec.allow_concurrent) == (overlap, overlap == "allow")


def test_allow_concurrent_alone_is_overlap_allow() -> None:
    assert TriggerSpec("orders", "wf", 5.0, True).overlap == "allow"
    assert TriggerSpec("orders", "wf", 5.0, allow_concurrent=True, overlap="allow").allow_concurrent is True
    assert TriggerSpec("orders", "wf", 5.0).overlap == "skip"


def test_a_spec_with_an_unknown_or_contradicting_policy_is_refused_naming_the_trigger() -> None:
    with pytest.raises(ValueError, match=r"trigger 'orders': unknown overlap policy 'queue'.*buffer_one"):
        TriggerSpec("orders", "wf", 5.0, overlap="queue")
    with pytest.raises(ValueError, match=r"trigger 'orders': allow_concurrent=True means overlap='allow'"):
        TriggerSpec("orders", "wf", 5.0, allow_concurrent=True, overlap="buffer_all")


def test_the_claim_and_the_row_take_the_work_key() -> None:
    plain = NewExecution("e-1", "orders", "wf", {"order": 1}, "c" * 64, [], D0)
    keyed = NewExecution("e-2", "orders", "wf", {"order": 1}, "c" * 64, [], D0, dedup_hash="k" * 64)
    assert (plain.claim_hash, keyed.claim_hash) == ("c" * 64, "k" * 64)
    assert claim_row(keyed, 1.0)["claim_key"] == claim_key("orders", "k" * 64)
    assert claim_row(keyed, 1.0)["context_hash"] == "k" * 64
    assert execution_row(keyed, 2.0)["dedup_hash"] == "k" * 64
    row = execution_row(plain, 2.0)
    assert (row["dedup_hash"], row["context_hash"]) == ("c" * 64, "c" * 64)


def fire(pending_id: str, created_at: float) -> PendingFire:
    return PendingFire(pending_id, "orders", "k" * 64, {}, "c" * 64, created_at)


def rows(*fires: PendingFire) -> list[dict[str, object]]:
    return [{"pending_id": f.pending_id, "created_at": f.created_at} for f in fires]


def test_the_oldest_pending_fires_past_the_limit_are_dropped() -> None:
    waiting = rows(fire("b", 2.0), fire("a", 1.0), fire("c", 3.0))
    assert pending_to_drop(waiting, fire("d", 4.0), False, 100) == []
    assert pending_to_drop(waiting, fire("d", 4.0), False, 3) == ["a"]
    assert pending_to_drop(waiting, fire("d", 4.0), False, 1) == ["a", "b", "c"]
    assert pending_to_drop(waiting, fire("early", 0.5), False, 3) == ["early"]
    assert pending_to_drop(rows(fire("b", 1.0)), fire("a", 1.0), False, 1) == ["a"]  # same instant: by id


def test_a_replacing_fire_drops_every_other() -> None:
    waiting = rows(fire("b", 2.0), fire("a", 1.0))
    assert pending_to_drop(waiting, fire("d", 0.5), True, 1) == ["a", "b"]
    assert pending_to_drop([], fire("d", 0.5), True, 1) == []


def test_a_downgrade_keys_claims_by_context_and_drops_a_second_claim_of_one_context() -> None:
    taken = [claim_key("orders", "k" * 64), claim_key("orders", "c" * 64), claim_key("orders", "m" * 64),
             claim_key("orders", "n" * 64)]
    changes = claims_by_context([
        (claim_key("orders", "k" * 64), "orders", "a" * 64),
        (claim_key("orders", "m" * 64), "orders", "c" * 64),  # context c is claimed as its own key
        (claim_key("orders", "n" * 64), "orders", "a" * 64),  # a second execution of context a
    ], taken)
    by_context = {"claim_key": claim_key("orders", "a" * 64), "context_hash": "a" * 64}
    assert changes == [
        (claim_key("orders", "k" * 64), by_context),
        (claim_key("orders", "m" * 64), None),
        (claim_key("orders", "n" * 64), None),
    ]
