"""What the Django admin's pages post, built as a browser would send them (used here and in tests/faults)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django_cloaca.models import TriggerSchedule


def enabled_toggle_post(checked: Callable[[str, bool], bool]) -> dict[str, Any]:
    """The trigger changelist's editable ``enabled`` column, saved: every row as it is now, with its
    box ticked where ``checked(trigger_name, enabled_now)`` says so."""
    rows = list(TriggerSchedule.objects.order_by("trigger_name").values_list("pk", "enabled"))
    data: dict[str, Any] = {
        "form-TOTAL_FORMS": str(len(rows)), "form-INITIAL_FORMS": str(len(rows)),
        "form-MIN_NUM_FORMS": "0", "form-MAX_NUM_FORMS": "1000", "_save": "Save",
    }
    for i, (name, enabled) in enumerate(rows):
        data[f"form-{i}-trigger_name"] = name
        if checked(name, enabled):
            data[f"form-{i}-enabled"] = "on"
    return data
