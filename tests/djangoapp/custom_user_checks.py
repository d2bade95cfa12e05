"""The admin with a custom user model (``AUTH_USER_MODEL = "accounts.Operator"``, signed in by e-mail).

Run by ``test_custom_user.py`` under ``tests.django_project.settings_custom_user``
(its name keeps pytest from collecting it under the default settings).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from django_cloaca.store import DjangoStore

pytestmark = pytest.mark.django_db

TRIGGERS = reverse("admin:django_cloaca_triggerschedule_changelist")


def test_the_admin_works_with_a_custom_user_model(store: DjangoStore, switches: dict[str, Any]) -> None:
    assert settings.AUTH_USER_MODEL == "accounts.Operator"
    operator = get_user_model().objects.create_superuser("ops@example.com", "pw")
    client = Client()
    client.force_login(operator)
    assert "invoice_watcher" in client.get(TRIGGERS).content.decode()
    page = client.post(TRIGGERS, {"action": "disable_triggers", "_selected_action": ["invoice_watcher"],
                                  "post": "yes", "note": "vendor maintenance"}, follow=True)
    assert "by ops@example.com, " in page.content.decode()
    paused = store.get_schedule("invoice_watcher")
    assert (paused["paused_by"], paused["pause_note"]) == ("ops@example.com", "vendor maintenance")
    switches["invoice"] = "INV-1"
    preview = client.post(reverse("admin:django_cloaca_triggerschedule_preview", args=["invoice_watcher"]))
    assert 'data-result="fire"' in preview.content.decode()
    client.post(TRIGGERS, {"action": "enable_triggers", "_selected_action": ["invoice_watcher"]}, follow=True)
    entries = LogEntry.objects.filter(object_id="invoice_watcher").order_by("pk")
    assert [(e.user_id, e.get_change_message().split(";")[0]) for e in entries] == [
        (operator.pk, "Disabled: vendor maintenance"),
        (operator.pk, "Preview: fire {\"invoice\": \"INV-1\"}"),
        (operator.pk, "Enabled (the pause note is cleared)."),
    ]
    history = reverse("admin:django_cloaca_triggerschedule_history", args=["invoice_watcher"])
    assert "vendor maintenance" in client.get(history).content.decode()
