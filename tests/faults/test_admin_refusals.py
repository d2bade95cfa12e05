"""Issue 7, case 8: the Django admin refuses every state-changing request it must.

Who: anonymous users, staff without permissions, staff who may only view,
and a superuser whose POST carries no CSRF token. What: every path that
changes something: the trigger actions (enable, disable, poll now), the
editable ``enabled`` toggle on the changelist, the trigger's change form,
adding and deleting triggers, and every change, delete and add on the
execution history (read-only for everybody, superusers included).

Each refusal is checked three ways: the response (302 to the login page, or
403, or, for a view-only user's action, the changelist shown again with no
action offered), the store (schedule rows and history exactly as they were),
and the Celery app (no ``cloaca.poll`` sent, and the trigger function never
ran). The allowed requests, made the same way with permission and a CSRF
token, do change things or send the poll: the refusals are not malformed
requests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from django_cloaca.models import TriggerExecution, TriggerSchedule
from django_cloaca.store import DjangoStore
from tests.django_project.celery_app import app as celery_app
from tests.djangoapp.admin_forms import enabled_toggle_post
from tests.djangoapp.conftest import bare_staff, store, superuser, switches, viewer  # noqa: F401
from tests.djangoapp.test_admin import _execution

pytestmark = pytest.mark.django_db

TRIGGERS = reverse("admin:django_cloaca_triggerschedule_changelist")
EXECUTIONS = reverse("admin:django_cloaca_triggerexecution_changelist")
NAME = "invoice_watcher"
OTHER = "nightly_report"
LOGIN = "/admin/login/"


@dataclass
class PollSpy:
    """Every ``cloaca.poll`` the admin sends, through the task or ``send_task``.

    The polls are recorded, not run: an eager poll would record its step's
    start from a background thread, which on SQLite waits for the test's
    transaction and then locks the next test out.
    """

    sent: list[Any]


@pytest.fixture
def polls(monkeypatch: pytest.MonkeyPatch) -> Iterator[PollSpy]:
    spy = PollSpy([])
    poll = celery_app.tasks["cloaca.poll"]

    def spied_apply(*args: Any, **kwargs: Any) -> None:
        spy.sent.append(("apply_async", args, kwargs))

    def spied_send(*args: Any, **kwargs: Any) -> None:
        spy.sent.append(("send_task", args, kwargs))

    monkeypatch.setattr(poll, "apply_async", spied_apply)
    monkeypatch.setattr(celery_app, "send_task", spied_send)
    yield spy


# -- who asks ------------------------------------------------------------------------------


def _client(kind: str, request: pytest.FixtureRequest) -> Client:
    if kind == "anonymous":
        return Client()
    user: User = request.getfixturevalue({
        "no-permission": "bare_staff", "view-only": "viewer", "no-csrf-token": "superuser",
        "superuser": "superuser", "allowed": "superuser",
    }[kind])
    client = Client(enforce_csrf_checks=kind in ("no-csrf-token", "allowed"))
    client.force_login(user)
    return client


def _post(client: Client, kind: str, url: str, data: dict[str, Any]) -> Any:
    """POST as a browser would: the allowed client sends the CSRF token from the page's cookie."""
    if kind == "allowed":
        client.get(TRIGGERS)
        data = {**data, "csrfmiddlewaretoken": client.cookies["csrftoken"].value}
    return client.post(url, data)


def _refused(response: Any, kind: str, url: str, action: bool) -> None:
    if kind == "anonymous":
        assert response.status_code == 302, response
        assert response["Location"].startswith(f"{LOGIN}?next={url}"), response["Location"]
    elif kind == "no-csrf-token":
        assert response.status_code == 403, response
        assert b"CSRF verification failed" in response.content
    elif kind == "view-only" and action:
        # Django offers a viewer no actions; the posted one is ignored and the list shown again.
        assert response.status_code == 200, response
        assert b'name="action"' not in response.content and b"poll_now" not in response.content
    else:
        assert response.status_code == 403, response


# -- what they ask for --------------------------------------------------------------------


def _action(action: str) -> Callable[[], tuple[str, dict[str, Any]]]:
    return lambda: (TRIGGERS, {"action": action, "_selected_action": [NAME]})


def _editable_toggle() -> tuple[str, dict[str, Any]]:
    """The changelist's ``enabled`` checkboxes, saved with NAME switched (other rows as they are)."""
    return TRIGGERS, enabled_toggle_post(lambda name, enabled: enabled != (name == NAME))


def _change_form() -> tuple[str, dict[str, Any]]:
    enabled = TriggerSchedule.objects.get(pk=NAME).enabled
    return (reverse("admin:django_cloaca_triggerschedule_change", args=[NAME]),
            {} if enabled else {"enabled": "on"})


TRIGGER_CHANGES: dict[str, Callable[[], tuple[str, dict[str, Any]]]] = {
    "enable-action": _action("enable_triggers"),
    "disable-action": lambda: (TRIGGERS, {"action": "disable_triggers", "_selected_action": [NAME],
                                          "post": "yes", "note": "forged or not"}),
    "poll-now-action": _action("poll_now"),
    "enabled-toggle": _editable_toggle,
    "change-form": _change_form,
}
NOBODY_MAY: dict[str, Callable[[], tuple[str, dict[str, Any]]]] = {
    "trigger-delete": lambda: (reverse("admin:django_cloaca_triggerschedule_delete", args=[NAME]),
                               {"post": "yes"}),
    "trigger-add": lambda: (reverse("admin:django_cloaca_triggerschedule_add"),
                            {"trigger_name": "forged", "workflow": "django_invoices", "enabled": "on"}),
}
PREVIEWS: dict[str, Callable[[], tuple[str, dict[str, Any]]]] = {
    "preview-action": _action("preview_triggers"),
    "preview-page": lambda: (reverse("admin:django_cloaca_triggerschedule_preview", args=[NAME]), {}),
}
"""They change nothing even when allowed (a preview writes nothing), but run the trigger's code."""
REFUSED = ["anonymous", "no-permission", "view-only", "no-csrf-token"]


def _snapshot(store: DjangoStore) -> tuple[Any, ...]:  # noqa: F811
    return (store.list_schedules(), store.execution_history(NAME), store.execution_history(OTHER),
            list(TriggerExecution.objects.order_by("pk").values()))


@pytest.mark.parametrize("kind", REFUSED)
@pytest.mark.parametrize("path", [*TRIGGER_CHANGES, *NOBODY_MAY, *PREVIEWS])
@pytest.mark.parametrize("enabled", [True, False], ids=["while-enabled", "while-disabled"])
def test_trigger_changes_are_refused_and_change_nothing(
    request: pytest.FixtureRequest, store: DjangoStore, switches: dict[str, Any],  # noqa: F811
    polls: PollSpy, kind: str, path: str, enabled: bool,
) -> None:
    store.set_enabled(NAME, enabled)
    switches["invoice"] = "INV-REFUSED"  # a poll that ran would fire with it
    before = _snapshot(store)
    url, data = {**TRIGGER_CHANGES, **NOBODY_MAY, **PREVIEWS}[path]()

    response = _post(_client(kind, request), kind, url, data)

    _refused(response, kind, url, action=path.endswith("-action"))
    assert _snapshot(store) == before
    assert polls.sent == []
    assert b"INV-REFUSED" not in response.content  # the trigger was not evaluated for them


@pytest.mark.parametrize("path", list(PREVIEWS))
def test_an_allowed_preview_shows_the_fire_and_changes_nothing(
    request: pytest.FixtureRequest, store: DjangoStore, switches: dict[str, Any],  # noqa: F811
    polls: PollSpy, path: str,
) -> None:
    switches["invoice"] = "INV-PREVIEWED"
    before = _snapshot(store)
    url, data = PREVIEWS[path]()
    client = _client("allowed", request)
    response = _post(client, "allowed", url, data)
    assert response.status_code == (302 if path.endswith("-action") else 200), response
    if response.status_code == 302:
        response = client.get(response["Location"])  # the messages, on the list
    assert b"INV-PREVIEWED" in response.content
    assert _snapshot(store) == before and polls.sent == []


@pytest.mark.parametrize("path", list(NOBODY_MAY))
def test_not_even_a_superuser_adds_or_deletes_triggers(
    request: pytest.FixtureRequest, store: DjangoStore, polls: PollSpy, path: str,  # noqa: F811
) -> None:
    before = _snapshot(store)
    url, data = NOBODY_MAY[path]()
    response = _post(_client("allowed", request), "allowed", url, data)
    assert response.status_code == 403, response
    assert _snapshot(store) == before and polls.sent == []


@pytest.mark.parametrize("path", list(TRIGGER_CHANGES))
@pytest.mark.parametrize("enabled", [True, False], ids=["while-enabled", "while-disabled"])
def test_the_same_requests_with_permission_and_token_do_change_things(
    request: pytest.FixtureRequest, store: DjangoStore, switches: dict[str, Any],  # noqa: F811
    polls: PollSpy, path: str, enabled: bool,
) -> None:
    """The control: what is refused above is a well-formed request that works when allowed."""
    store.set_enabled(NAME, enabled)
    switches["invoice"] = "INV-ALLOWED"
    url, data = TRIGGER_CHANGES[path]()

    response = _post(_client("allowed", request), "allowed", url, data)

    assert response.status_code == 302, response
    row = store.get_schedule(NAME)
    if path == "poll-now-action":
        # A disabled trigger is never polled: "poll now" says so instead of sending a poll.
        sent = [("apply_async", (NAME,))] if enabled else []
        assert [(how, kwargs.get("args")) for how, _, kwargs in polls.sent] == sent
        assert row["enabled"] is enabled
    else:
        expected = {"enable-action": True, "disable-action": False}.get(path, not enabled)
        assert row["enabled"] is expected
        assert polls.sent == []


# -- execution history: read-only for everybody ---------------------------------------------


EXECUTION_CHANGES: dict[str, Callable[[str], tuple[str, dict[str, Any]]]] = {
    "change": lambda eid: (reverse("admin:django_cloaca_triggerexecution_change", args=[eid]),
                           {"status": "succeeded", "error": ""}),
    "delete": lambda eid: (reverse("admin:django_cloaca_triggerexecution_delete", args=[eid]),
                           {"post": "yes"}),
    "add": lambda eid: (reverse("admin:django_cloaca_triggerexecution_add"),
                        {"execution_id": "forged", "trigger_name": NAME, "status": "queued"}),
    "bulk-delete": lambda eid: (EXECUTIONS, {"action": "delete_selected", "_selected_action": [eid],
                                             "post": "yes"}),
}


@pytest.mark.parametrize("kind", [*REFUSED, "allowed"])
@pytest.mark.parametrize("path", list(EXECUTION_CHANGES))
def test_execution_history_is_read_only_for_everybody(
    request: pytest.FixtureRequest, store: DjangoStore, polls: PollSpy,  # noqa: F811
    kind: str, path: str,
) -> None:
    execution_id = _execution(store, NAME, "failed", {"invoice": "INV-1"})
    before = _snapshot(store)
    url, data = EXECUTION_CHANGES[path](execution_id)

    response = _post(_client(kind, request), kind, url, data)

    if kind == "allowed":  # a superuser with a token: still no change, delete or add
        if path == "bulk-delete":
            assert response.status_code == 200, response  # no such action is offered
            assert b"delete_selected" not in response.content
        else:
            assert response.status_code == 403, response
    else:
        _refused(response, kind, url, action=path == "bulk-delete")
    assert _snapshot(store) == before
    assert store.get_execution(execution_id)["status"] == "failed"
    assert polls.sent == []
