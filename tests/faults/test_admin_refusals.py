"""Issue 7, case 8: the Django admin refuses every state-changing request it must.

Anonymous users, staff without permissions, staff who may only view, and
POSTs without a CSRF token, on every path that changes something: the trigger
actions (enable, disable, poll now), the trigger's change form (the enabled
switch), and the execution history (read-only for everybody). Each refusal is
checked twice: by the response, and by the store row (and history) being as
they were, with no poll run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from django_cloaca.models import TriggerExecution, TriggerSchedule
from django_cloaca.store import DjangoStore
from tests.djangoapp.conftest import bare_staff, changer, store, superuser, switches, viewer  # noqa: F401
from tests.djangoapp.test_admin import _execution

pytestmark = pytest.mark.django_db

TRIGGERS = reverse("admin:django_cloaca_triggerschedule_changelist")
EXECUTIONS = reverse("admin:django_cloaca_triggerexecution_changelist")
NAME = "invoice_watcher"


def _who(kind: str, request: pytest.FixtureRequest) -> Client:
    if kind == "anonymous":
        return Client()
    user: User = request.getfixturevalue({"no-permission": "bare_staff", "view-only": "viewer",
                                          "no-csrf-token": "changer"}[kind])
    client = Client(enforce_csrf_checks=kind == "no-csrf-token")
    client.force_login(user)
    return client


def _refused(response: Any, kind: str) -> None:
    if kind == "anonymous":
        assert response.status_code == 302 and "/admin/login/" in response["Location"], response
    elif kind == "view-only":
        # The changelist answers 200 without acting (no action is offered); forms answer 403.
        assert response.status_code in (200, 302, 403), response
    else:
        assert response.status_code == 403, response


def _action(action: str) -> Callable[[Client], Any]:
    return lambda c: c.post(TRIGGERS, {"action": action, "_selected_action": [NAME]})


TRIGGER_REQUESTS: dict[str, Callable[[Client], Any]] = {
    "disable": _action("disable_triggers"),
    "enable": _action("enable_triggers"),
    "poll-now": _action("poll_now"),
    "change-form": lambda c: c.post(reverse("admin:django_cloaca_triggerschedule_change", args=[NAME]),
                                    {"enabled": ""}),
    "delete": lambda c: c.post(reverse("admin:django_cloaca_triggerschedule_delete", args=[NAME]),
                               {"post": "yes"}),
}
KINDS = ["anonymous", "no-permission", "view-only", "no-csrf-token"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", sorted(TRIGGER_REQUESTS))
def test_trigger_changes_are_refused_and_change_nothing(
    request: pytest.FixtureRequest, store: DjangoStore, switches: dict[str, Any],  # noqa: F811
    kind: str, path: str,
) -> None:
    if path == "enable":
        store.set_enabled(NAME, False)
    switches["invoice"] = "INV-REFUSED"  # a poll that ran would fire with it
    before = store.get_schedule(NAME)

    _refused(TRIGGER_REQUESTS[path](_who(kind, request)), kind)

    assert store.get_schedule(NAME) == before
    assert store.execution_history(NAME) == []
    assert TriggerSchedule.objects.filter(pk=NAME).exists()


EXECUTION_REQUESTS: dict[str, Callable[[Client, str], Any]] = {
    "change": lambda c, eid: c.post(reverse("admin:django_cloaca_triggerexecution_change", args=[eid]),
                                    {"status": "succeeded"}),
    "delete": lambda c, eid: c.post(reverse("admin:django_cloaca_triggerexecution_delete", args=[eid]),
                                    {"post": "yes"}),
    "add": lambda c, eid: c.post(reverse("admin:django_cloaca_triggerexecution_add"),
                                 {"execution_id": "forged", "trigger_name": NAME, "status": "queued"}),
    "bulk-delete": lambda c, eid: c.post(EXECUTIONS, {"action": "delete_selected", "_selected_action": [eid],
                                                      "post": "yes"}),
}


@pytest.mark.parametrize("kind", [*KINDS, "superuser"])
@pytest.mark.parametrize("path", sorted(EXECUTION_REQUESTS))
def test_execution_history_is_read_only_for_everybody(
    request: pytest.FixtureRequest, store: DjangoStore, kind: str, path: str,  # noqa: F811
) -> None:
    execution_id = _execution(store, NAME, "failed", {"invoice": "INV-1"})
    before = store.get_execution(execution_id)
    if kind == "superuser":
        client = Client()
        client.force_login(request.getfixturevalue("superuser"))
        response = EXECUTION_REQUESTS[path](client, execution_id)
        assert response.status_code in (200, 302, 403), response  # 200/302: no such action or form
    else:
        _refused(EXECUTION_REQUESTS[path](_who(kind, request), execution_id), kind)
    assert store.get_execution(execution_id) == before
    assert list(TriggerExecution.objects.values_list("execution_id", flat=True)) == [execution_id]
