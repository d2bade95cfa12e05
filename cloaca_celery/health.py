"""When a trigger is unhealthy: the one rule that ``cloaca check`` and the admin apply.

A trigger whose polls keep failing is unhealthy once its last
:data:`UNHEALTHY_AFTER_ERRORS` polls failed in a row; one or two failures are
a warning (a network blip should not fail a liveness probe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UNHEALTHY_AFTER_ERRORS = 3


@dataclass(frozen=True)
class TriggerHealth:
    """``status`` is ``ok``, ``warning`` or ``unhealthy``; ``reason`` says why (empty when ok)."""

    trigger_name: str
    status: str
    reason: str = ""


def assess_schedule(schedule: dict[str, Any]) -> TriggerHealth:
    """The health of one trigger from its schedule row (a store's schedule dict)."""
    name = schedule["trigger_name"]
    errors = int(schedule.get("consecutive_errors") or 0)
    if errors == 0 or not schedule.get("enabled", True):
        return TriggerHealth(name, "ok")
    last = (schedule.get("last_error") or "no error text recorded").strip()
    at = schedule.get("last_error_at")
    when = f" at {at:%Y-%m-%d %H:%M:%S} UTC" if at is not None else ""
    polls = "poll" if errors == 1 else f"{errors} polls"
    reason = f"its last {polls} failed; the last error{when}: {last}"
    return TriggerHealth(name, "unhealthy" if errors >= UNHEALTHY_AFTER_ERRORS else "warning", reason)
