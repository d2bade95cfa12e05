"""The admin pages: lists, filters, actions, read-only history, permissions and CSRF."""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client, RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from cloaca_celery.context import context_hash
from cloaca_celery.counters import HealthCounter, HealthCounts
from cloaca_celery.store import PAUSE_FIELDS, NewExecution, TriggerSpec
from django_cloaca.admin import TriggerFilter, WorkflowFilter
from django_cloaca.models import TriggerExecution, TriggerSchedule
from django_cloaca.store import DjangoStore
from tests.djangoapp.admin_forms import enabled_toggle_post

pytestmark = pytest.mark.django_db

TRIGGERS = reverse("admin:django_cloaca_triggerschedule_changelist")
EXECUTIONS = reverse("admin:django_cloaca_triggerexecution_changelist")


def _client(user: User, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def _execution(store: DjangoStore, trigger: str, status: str, context: dict[str, Any],
               started: datetime | None = None, workflow: str = "django_invoices") -> str:
    execution_id = str(uuid.uuid4())
    store.record_fire(
        NewExecution(execution_id, trigger, workflow, context, context_hash(context),
                     [execution_id], started or datetime.now(timezone.utc)),
        claim=False, now=time.time(), deadline=time.time() + 600,
    )
    if status != "queued":
        store.finish_execution(execution_id, status, "boom" if status == "failed" else None,
                               datetime.now(timezone.utc))
    return execution_id


def _action(client: Client, action: str, *names: str) -> Any:
    return client.post(TRIGGERS, {"action": action, "_selected_action": list(names)}, follow=True)


# -- access -----------------------------------------------------------------------


def test_anonymous_users_are_sent_to_login(client: Client, store: DjangoStore) -> None:
    for url in (TRIGGERS, EXECUTIONS):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_staff_without_model_permissions_cannot_see_triggers(bare_staff: User, store: DjangoStore) -> None:
    client = _client(bare_staff)
    assert client.get(TRIGGERS).status_code == 403
    assert client.get(EXECUTIONS).status_code == 403
    assert _action(client, "disable_triggers", "invoice_watcher").status_code == 403
    assert TriggerSchedule.objects.get(pk="invoice_watcher").enabled is True


def test_view_permission_shows_but_cannot_switch(viewer: User, store: DjangoStore) -> None:
    client = _client(viewer)
    page = client.get(TRIGGERS)
    assert page.status_code == 200 and b"invoice_watcher" in page.content
    assert b"disable_triggers" not in page.content  # no actions without change permission
    _action(client, "disable_triggers", "invoice_watcher")
    assert TriggerSchedule.objects.get(pk="invoice_watcher").enabled is True
    change = reverse("admin:django_cloaca_triggerschedule_change", args=["invoice_watcher"])
    assert client.post(change, {"enabled": ""}).status_code == 403
    assert TriggerSchedule.objects.get(pk="invoice_watcher").enabled is True


def test_posts_without_csrf_token_are_refused(changer: User, store: DjangoStore) -> None:
    client = _client(changer, csrf=True)
    response = client.post(TRIGGERS, {"action": "disable_triggers", "_selected_action": ["invoice_watcher"]})
    assert response.status_code == 403
    assert TriggerSchedule.objects.get(pk="invoice_watcher").enabled is True


# -- triggers list and actions ---------------------------------------------------------


def test_trigger_list_shows_the_schedule_columns(superuser: User, store: DjangoStore) -> None:
    store.get_schedule("invoice_watcher")
    TriggerSchedule.objects.filter(pk="nightly_report").update(
        consecutive_errors=3, last_error="RuntimeError: report database down"
    )
    page = _client(superuser).get(TRIGGERS).content.decode()
    for text in ("invoice_watcher", "django_invoices", "5s", "1h", "report database down",
                 "Last poll at", "Last fire at", "executions"):
        assert text in page, text


def test_search_and_filters(superuser: User, store: DjangoStore) -> None:
    client = _client(superuser)
    found = client.get(TRIGGERS, {"q": "nightly"}).content.decode()
    assert "nightly_report" in found and "invoice_watcher" not in found
    store.set_enabled("nightly_report", False)
    disabled = client.get(TRIGGERS, {"enabled__exact": "0"}).content.decode()
    assert "nightly_report" in disabled and "invoice_watcher" not in disabled


def _disable(client: Client, note: str, *names: str) -> Any:
    """The disable action's second step: its intermediate page posted back with a note."""
    return client.post(TRIGGERS, {"action": "disable_triggers", "_selected_action": list(names),
                                  "post": "yes", "note": note}, follow=True)


def test_enable_and_disable_actions_need_change_permission_and_write_the_row(
    changer: User, store: DjangoStore
) -> None:
    client = _client(changer)
    asked = _action(client, "disable_triggers", "invoice_watcher", "nightly_report").content.decode()
    assert "Why are they paused?" in asked and 'name="post"' in asked
    assert store.get_schedule("invoice_watcher")["enabled"] is True  # not before the note page is sent
    response = _disable(client, "", "invoice_watcher", "nightly_report")
    assert "2 trigger(s) disabled" in response.content.decode()
    assert store.get_schedule("invoice_watcher")["enabled"] is False
    assert store.get_schedule("nightly_report")["enabled"] is False
    _action(client, "enable_triggers", "invoice_watcher")
    assert store.get_schedule("invoice_watcher")["enabled"] is True
    assert store.get_schedule("nightly_report")["enabled"] is False


def test_the_editable_toggle_writes_only_enabled(superuser: User, store: DjangoStore) -> None:
    TriggerSchedule.objects.filter(pk="invoice_watcher").update(state={"cursor": 41}, consecutive_errors=2)
    client = _client(superuser)
    data = enabled_toggle_post(lambda name, enabled: enabled and name != "invoice_watcher")
    # Meanwhile a poll writes the row: the admin's save must not overwrite it.
    TriggerSchedule.objects.filter(pk="invoice_watcher").update(state={"cursor": 42})
    response = client.post(TRIGGERS, data, follow=True)
    assert response.status_code == 200
    row = TriggerSchedule.objects.get(pk="invoice_watcher")
    assert row.enabled is False and row.state == {"cursor": 42} and row.consecutive_errors == 2


def test_poll_now_goes_through_the_poll_task_and_dedup(
    superuser: User, store: DjangoStore, switches: dict[str, Any]
) -> None:
    client = _client(superuser)
    switches["invoice"] = "INV-9"
    response = _action(client, "poll_now", "invoice_watcher")
    assert "Poll sent for invoice_watcher" in response.content.decode()
    history = store.execution_history("invoice_watcher")
    assert len(history) == 1 and history[0]["status"] == "succeeded"
    assert history[0]["context"] == {"invoice": "INV-9"}
    # An active execution of the same context holds the claim: poll now is deduplicated.
    holder = str(uuid.uuid4())
    store.record_fire(
        NewExecution(holder, "invoice_watcher", "django_invoices", {"invoice": "INV-9"},
                     context_hash({"invoice": "INV-9"}), [holder], datetime.now(timezone.utc)),
        claim=True, now=store.now(), deadline=store.now() + 600,
    )
    _action(client, "poll_now", "invoice_watcher")
    assert len(store.execution_history("invoice_watcher")) == 2
    assert store.get_schedule("invoice_watcher")["dedup_count"] == 1


def test_poll_now_leaves_a_disabled_trigger_alone(
    superuser: User, store: DjangoStore, switches: dict[str, Any]
) -> None:
    switches["invoice"] = "INV-10"
    store.set_enabled("invoice_watcher", False)
    page = _action(_client(superuser), "poll_now", "invoice_watcher").content.decode()
    assert store.execution_history("invoice_watcher") == []
    assert "Not polled: &#x27;invoice_watcher&#x27; is disabled" in page, page
    assert "Enable it first" in page and "Poll sent" not in page


# -- execution history ---------------------------------------------------------------


def test_history_is_read_only_with_filters_search_and_links(superuser: User, store: DjangoStore) -> None:
    old = datetime.now(timezone.utc) - timedelta(days=40)
    ok = _execution(store, "invoice_watcher", "succeeded", {"invoice": "INV-1", "customer": "Zoë"})
    bad = _execution(store, "invoice_watcher", "failed", {"invoice": "INV-2"})
    other = _execution(store, "nightly_report", "succeeded", {"day": "monday"}, started=old)
    client = _client(superuser)
    listing = client.get(EXECUTIONS).content.decode()
    assert ok in listing and bad in listing and other in listing
    failed = client.get(EXECUTIONS, {"status__exact": "failed"}).content.decode()
    assert bad in failed and ok not in failed
    by_trigger = client.get(EXECUTIONS, {"trigger_name__exact": "nightly_report"}).content.decode()
    assert other in by_trigger and ok not in by_trigger
    searched = client.get(EXECUTIONS, {"q": "INV-1"}).content.decode()
    assert ok in searched and bad not in searched
    year = client.get(EXECUTIONS, {"started_at__year": str(old.year), "started_at__month": str(old.month)})
    assert other in year.content.decode()
    detail = client.get(reverse("admin:django_cloaca_triggerexecution_change", args=[ok])).content.decode()
    assert "&quot;customer&quot;: &quot;Zoë&quot;" in detail or '"customer": "Zoë"' in detail
    assert reverse("admin:django_cloaca_triggerschedule_change", args=["invoice_watcher"]) in detail
    assert 'name="_save"' not in detail
    assert client.post(reverse("admin:django_cloaca_triggerexecution_change", args=[ok]),
                       {"status": "failed"}).status_code == 403
    assert TriggerExecution.objects.get(pk=ok).status == "succeeded"
    trigger_page = client.get(reverse("admin:django_cloaca_triggerschedule_change", args=["invoice_watcher"]))
    assert "trigger_name__exact=invoice_watcher" in trigger_page.content.decode()


def test_trigger_and_workflow_filters_take_their_choices_from_the_schedules(
    superuser: User, store: DjangoStore
) -> None:
    """Their choices never scan the executions table (it grows with history; schedules do not)."""
    store.sync_triggers([TriggerSpec("ledger_watch", "ledger_sync", 60.0, False)], time.time(), prune=False)
    invoice = _execution(store, "invoice_watcher", "succeeded", {"invoice": "INV-3"})
    ledger = _execution(store, "ledger_watch", "succeeded", {"ledger": 1}, workflow="ledger_sync")
    request = RequestFactory().get(EXECUTIONS)
    model_admin = admin.site._registry[TriggerExecution]

    with CaptureQueriesContext(connection) as queries:
        triggers = TriggerFilter(request, {}, TriggerExecution, model_admin).lookup_choices
        workflows = WorkflowFilter(request, {}, TriggerExecution, model_admin).lookup_choices
    assert list(triggers) == [(name, name) for name in ("invoice_watcher", "ledger_watch", "nightly_report")]
    assert list(workflows) == [("django_invoices", "django_invoices"), ("ledger_sync", "ledger_sync")]
    assert queries.captured_queries, "the choices were not read from the database"
    for query in queries.captured_queries:
        assert "cloaca_schedules" in query["sql"] and "cloaca_executions" not in query["sql"], query["sql"]

    client = _client(superuser)
    with CaptureQueriesContext(connection) as queries:
        page = client.get(EXECUTIONS).content.decode()
    assert "?trigger_name__exact=ledger_watch" in page and "?workflow__exact=ledger_sync" in page
    # (date_hierarchy's own DISTINCT over started_at is Django's, and not a filter's.)
    filter_columns = ('"cloaca_executions"."trigger_name"', '"cloaca_executions"."workflow"')
    scans = [q["sql"] for q in queries.captured_queries
             if "DISTINCT" in q["sql"].upper() and any(column in q["sql"] for column in filter_columns)]
    assert scans == []
    assert len([q for q in queries.captured_queries if "cloaca_schedules" in q["sql"]]) >= 2
    by_workflow = client.get(EXECUTIONS, {"workflow__exact": "ledger_sync"}).content.decode()
    assert ledger in by_workflow and invoice not in by_workflow
    by_trigger = client.get(EXECUTIONS, {"trigger_name__exact": "invoice_watcher"}).content.decode()
    assert invoice in by_trigger and ledger not in by_trigger


# -- pause notes, the change history, preview ---------------------------------------------


def _history(name: str) -> list[tuple[str, str]]:
    """The trigger's change history (Django's LogEntry), oldest first: (username, message)."""
    from django.contrib.admin.models import LogEntry

    entries = LogEntry.objects.filter(object_id=name).order_by("action_time", "pk")
    return [(entry.user.get_username(), entry.get_change_message()) for entry in entries]


def test_disabling_asks_why_and_records_who_when_and_why(changer: User, store: DjangoStore) -> None:
    client = _client(changer)
    before = store.now()
    page = _disable(client, "  supplier API down until Monday  ", "invoice_watcher").content.decode()
    assert "1 trigger(s) disabled" in page
    paused = store.get_schedule("invoice_watcher")
    assert (paused["enabled"], paused["paused_by"], paused["pause_note"]) == (
        False, "changer", "supplier API down until Monday")
    assert before - 1 <= paused["paused_at"].timestamp() <= store.now() + 1
    # The list shows it, and so does the trigger's page.
    assert f"by changer, {paused['paused_at']:%Y-%m-%d %H:%M}<br>supplier API down until Monday" in page
    change = reverse("admin:django_cloaca_triggerschedule_change", args=["invoice_watcher"])
    detail = client.get(change).content.decode()
    assert "supplier API down until Monday" in detail and "changer" in detail
    assert _history("invoice_watcher") == [("changer", "Disabled: supplier API down until Monday")]

    # Enabling clears the pause, and is in the history too.
    _action(client, "enable_triggers", "invoice_watcher")
    enabled = store.get_schedule("invoice_watcher")
    assert [enabled[k] for k in ("enabled", *PAUSE_FIELDS)] == [True, None, None, None]
    assert _history("invoice_watcher")[-1] == ("changer", "Enabled (the pause note is cleared).")
    too_long = _disable(client, "x" * 1001, "invoice_watcher").content.decode()
    assert "at most 1000 characters" in too_long
    assert store.get_schedule("invoice_watcher")["enabled"] is True


def test_the_change_page_switch_records_the_note_and_a_save_without_a_switch_keeps_it(
    changer: User, store: DjangoStore
) -> None:
    client = _client(changer)
    change = reverse("admin:django_cloaca_triggerschedule_change", args=["nightly_report"])
    form = client.get(change).content.decode()
    assert 'name="note"' in form and "cloaca-preview-link" in form
    assert client.post(change, {"note": "report DB migration tonight"}, follow=True).status_code == 200
    paused = store.get_schedule("nightly_report")
    assert (paused["enabled"], paused["paused_by"], paused["pause_note"]) == (
        False, "changer", "report DB migration tonight")
    assert _history("nightly_report") == [("changer", "Disabled: report DB migration tonight")]
    client.post(change, {"note": ""}, follow=True)  # saved again, still disabled: the pause stays
    assert store.get_schedule("nightly_report") == paused
    refused = client.post(change, {"enabled": "on", "note": "why"}).content.decode()
    assert "A note is recorded only when the trigger is disabled" in refused
    assert store.get_schedule("nightly_report")["enabled"] is False
    client.post(change, {"enabled": "on", "note": ""}, follow=True)
    assert store.get_schedule("nightly_report")["paused_at"] is None
    assert _history("nightly_report")[-1] == ("changer", "Enabled (the pause note is cleared).")


def test_the_list_toggle_records_who_switched_it_off(superuser: User, store: DjangoStore) -> None:
    rows = list(TriggerSchedule.objects.order_by("trigger_name").values_list("pk", flat=True))
    data: dict[str, Any] = {
        "form-TOTAL_FORMS": str(len(rows)), "form-INITIAL_FORMS": str(len(rows)),
        "form-MIN_NUM_FORMS": "0", "form-MAX_NUM_FORMS": "1000", "_save": "Save",
    }
    for i, name in enumerate(rows):
        data[f"form-{i}-trigger_name"] = name
        if name != "invoice_watcher":
            data[f"form-{i}-enabled"] = "on"
    _client(superuser).post(TRIGGERS, data, follow=True)
    row = store.get_schedule("invoice_watcher")
    assert (row["enabled"], row["paused_by"], row["pause_note"]) == (False, "root", None)
    assert row["paused_at"] is not None
    assert _history("invoice_watcher") == [("root", "Disabled (no note).")]
    assert _history("nightly_report") == []  # unchanged rows are neither written nor logged


def test_poll_now_is_in_the_change_history(superuser: User, store: DjangoStore) -> None:
    _action(_client(superuser), "poll_now", "nightly_report")
    assert _history("nightly_report") == [("root", "Polled now (a cloaca.poll task was sent).")]


def _writes(store: DjangoStore) -> tuple[Any, ...]:
    """Everything a poll or a fire could have written."""
    from django_cloaca.models import TriggerClaim, TriggerPending

    return (store.list_schedules(), TriggerExecution.objects.count(), TriggerClaim.objects.count(),
            TriggerPending.objects.count())


def test_preview_evaluates_and_shows_fire_skip_or_error_and_writes_nothing(
    changer: User, store: DjangoStore, switches: dict[str, Any]
) -> None:
    client = _client(changer)
    url = reverse("admin:django_cloaca_triggerschedule_preview", args=["invoice_watcher"])
    before = _writes(store)
    assert "Run the preview on a worker" in client.get(url).content.decode()
    assert _writes(store) == before

    switches["invoice"] = "INV-77"
    fired = client.post(url).content.decode()
    assert 'data-result="fire"' in fired
    assert "&quot;invoice&quot;: &quot;INV-77&quot;" in fired
    assert "a poll now would start workflow &#x27;django_invoices&#x27;" in fired
    switches["invoice"] = None
    skipped = client.post(url).content.decode()
    assert 'data-result="skip"' in skipped and "its condition is not met" in skipped
    switches["invoice"] = {"not", "json"}  # a set: JSON cannot hold it, the fire raises
    failed = client.post(url).content.decode()
    assert 'data-result="error"' in failed and "ContextError: context key &#x27;invoice&#x27;" in failed
    assert _writes(store) == before, "a preview wrote to the store"
    assert [message for _, message in _history("invoice_watcher")] == [
        "Preview: fire {\"invoice\": \"INV-77\"}; a poll now would start workflow 'django_invoices'",
        "Preview: skip; the trigger returned skip (TriggerResult.skip() or False): its condition is not met",
        _history("invoice_watcher")[2][1],
    ]
    assert _history("invoice_watcher")[2][1].startswith("Preview: error; ContextError: context key")

    # The list's action does the same for several triggers at once.
    switches["invoice"] = "INV-78"
    page = _action(client, "preview_triggers", "invoice_watcher", "nightly_report").content.decode()
    assert "Preview of invoice_watcher: fire {&quot;invoice&quot;: &quot;INV-78&quot;}" in page
    assert "Preview of nightly_report: skip" in page
    assert _writes(store) == before


def test_preview_says_when_an_active_execution_would_hold_the_fire(
    changer: User, store: DjangoStore, switches: dict[str, Any]
) -> None:
    holder = _execution(store, "invoice_watcher", "queued", {"invoice": "INV-5"})
    switches["invoice"] = "INV-5"
    url = reverse("admin:django_cloaca_triggerschedule_preview", args=["invoice_watcher"])
    page = _client(changer).post(url).content.decode()
    assert 'data-result="fire"' in page and holder in page
    assert "overlap=&#x27;skip&#x27; would have it skipped as deduplicated" in page


def test_preview_needs_the_change_permission(viewer: User, store: DjangoStore) -> None:
    url = reverse("admin:django_cloaca_triggerschedule_preview", args=["invoice_watcher"])
    assert _client(viewer).get(url).status_code == 403
    assert _client(viewer).post(url).status_code == 403
    change = reverse("admin:django_cloaca_triggerschedule_change", args=["invoice_watcher"])
    assert "cloaca-preview-link" not in _client(viewer).get(change).content.decode()
    assert _history("invoice_watcher") == []


@pytest.mark.parametrize("timeout", ["soon", 0, -1, True])
def test_a_bad_preview_timeout_is_named_on_the_page(
    changer: User, store: DjangoStore, switches: dict[str, Any], timeout: object
) -> None:
    switches["invoice"] = "INV-NOT-SEEN"
    url = reverse("admin:django_cloaca_triggerschedule_preview", args=["invoice_watcher"])
    with override_settings(CLOACA_PREVIEW_TIMEOUT=timeout):
        page = _client(changer).post(url).content.decode()
    assert 'data-result="error"' in page and "INV-NOT-SEEN" not in page
    assert "the setting CLOACA_PREVIEW_TIMEOUT must be a positive number of seconds" in page


# -- health ----------------------------------------------------------------------


def _counted(store: DjangoStore, trigger: str, at: float, skips: int, fires: int, errors: int = 0) -> None:
    """Write one process's health row for the minute of ``at``, as a worker's flush does."""
    rows: list[HealthCounts] = []
    counter = HealthCounter(lambda _, found: rows.extend(found), lambda: at, 3600.0)
    for outcome, count in (("skipped", skips), ("fired", fires), ("error", errors)):
        for _ in range(count):
            counter.poll(trigger, outcome, "skip", at - 0.004, at)
    counter.flush()
    store.save_health(f"web-test:{trigger}:{int(at)}", rows)


def test_the_list_marks_unhealthy_triggers_by_both_rules(superuser: User, store: DjangoStore) -> None:
    now = time.time()
    store.sync_triggers([TriggerSpec("ledger_watch", "ledger_sync", 60.0, False)], now, prune=False)
    long_ago = datetime.now(timezone.utc) - timedelta(hours=3)
    TriggerSchedule.objects.update(created_at=long_ago, updated_at=long_ago)
    _counted(store, "invoice_watcher", now - 2, skips=3, fires=1)  # polled 2 s ago, every 5 s: ok
    _counted(store, "ledger_watch", now - 600, skips=3, fires=0)  # every minute; last 10 minutes ago
    TriggerSchedule.objects.filter(pk="nightly_report").update(  # polled lately, but failing
        consecutive_errors=3, last_error="RuntimeError: report database down", last_poll_at=long_ago,
    )
    _counted(store, "nightly_report", now - 30, skips=0, fires=0, errors=3)
    client = _client(superuser)
    with CaptureQueriesContext(connection) as queries:
        page = client.get(TRIGGERS).content.decode()
    rows = [row for row in page.split("<tr")[1:] if "cloaca-health " in row]
    marks = {re.search(r">(\w+)</a></th>", row).group(1):  # type: ignore[union-attr]
             re.search(r"cloaca-health cloaca-health-(\w+)", row).group(1)  # type: ignore[union-attr]
             for row in rows}
    assert marks == {"invoice_watcher": "ok", "ledger_watch": "unhealthy", "nightly_report": "unhealthy"}
    assert "not polled for 10m" in page and "its last 3 polls failed" in page
    assert len([q for q in queries.captured_queries if "cloaca_health" in q["sql"]]) == 1  # one for the page


def test_a_triggers_page_charts_its_last_hour_and_day(superuser: User, store: DjangoStore) -> None:
    now = time.time()
    _counted(store, "invoice_watcher", now - 120, skips=8, fires=2)
    _counted(store, "invoice_watcher", now - 5 * 3600, skips=40, fires=0, errors=1)
    url = reverse("admin:django_cloaca_triggerschedule_change", args=["invoice_watcher"])
    page = _client(superuser).get(url).content.decode()
    assert page.count("<svg") >= 2 and "cloaca-health-chart" in page
    hour, day = page.split("Last day", 1)
    assert "10 polls: 8 skipped, 2 fired" in hour, hour[hour.rfind("cloaca-health-charts"):][:400]
    assert "51 polls: 48 skipped, 2 fired, 0 held back, 1 failed" in day
    bars = [int(x.split('"', 1)[0]) for x in hour.split('data-polls="')[1:]]
    assert len(bars) >= 60 and sum(bars) == 10
    assert "<script" not in page.split("cloaca-health-charts", 1)[1].split("</fieldset>", 1)[0]
