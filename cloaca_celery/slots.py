"""A scheduled poll's place in time: computed once by the dispatcher, carried by the poll.

The dispatcher claims a trigger's slot (the row's ``next_poll_at`` moves one
interval on) and sends a poll for it. Everything the poll must know about its
time comes with it in one :class:`Slot`, so the dispatcher and the poll can
never disagree on a deadline. Times are epoch seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

LEASE_SLACK = 0.05
"""How long before the next slot a poll still running must have written its lease (at most interval/10)."""


@dataclass(frozen=True)
class Slot:
    """One scheduled poll of one trigger.

    ``due``: when the slot began (for the record). ``next_due``: when the next
    slot begins, the row's new ``next_poll_at``. ``start_by``: the latest the
    poll may start; later, it is dropped unrun (``late``). ``lease_by``: the
    latest it may run without a lease in the store; a poll still running then
    writes one, so the next slot's dispatch sees it. ``errors``: the row's
    ``consecutive_errors`` when the slot was claimed.
    """

    due: float
    next_due: float
    start_by: float
    lease_by: float
    errors: int = 0

    @classmethod
    def claimed(cls, due: float, next_due: float, interval: float, sent: float, errors: int = 0) -> Slot:
        """The slot of a poll sent at ``sent`` for the slot ``due``..``next_due``.

        ``lease_by`` is a little before ``next_due``: the next slot is claimed
        from ``next_due`` on, and that claim must see the lease of a poll
        still running. ``start_by`` is half an interval after the send (a
        poll waits up to one dispatch tick after its slot to be sent; that
        wait is the dispatcher's, not a backlog), and never after
        ``lease_by``: a poll that starts in time never meets the next slot's.
        """
        lease_by = next_due - min(LEASE_SLACK, interval / 10)
        start_by = min(lease_by, max(due, sent) + interval / 2)
        return cls(due=due, next_due=next_due, start_by=start_by, lease_by=lease_by, errors=int(errors))

    def as_message(self) -> dict[str, Any]:
        """The slot as the JSON object the poll message carries."""
        return asdict(self)

    @classmethod
    def from_message(cls, data: dict[str, Any]) -> Slot:
        return cls(due=float(data["due"]), next_due=float(data["next_due"]),
                   start_by=float(data["start_by"]), lease_by=float(data["lease_by"]),
                   errors=int(data.get("errors", 0)))
