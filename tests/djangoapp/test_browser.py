"""A real browser (headless Chromium driven by Playwright) through the admin.

Logs in, disables a trigger, opens its history, and takes screenshots. They
go to the test's temporary folder; with ``CLOACA_REFRESH_SCREENSHOTS=1`` they
replace the pictures of the docs' admin page in ``docs/img/`` (``make
screenshots``), so ``make test`` leaves the working tree as it found it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import services_required

REPO = Path(__file__).resolve().parents[2]
DOCS_IMG = REPO / "docs" / "img"
CHROMIUM = os.environ.get("CLOACA_TEST_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _need_browser() -> None:
    missing = [what for what, ok in (
        ("Chromium at " + CHROMIUM, Path(CHROMIUM).exists() or shutil.which(CHROMIUM)),
        ("the playwright package", _importable("playwright")),
    ) if not ok]
    if missing:
        message = f"{' and '.join(missing)} missing (apt-get install chromium; pip install playwright)"
        if services_required():
            pytest.fail(message)
        pytest.skip(message)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.mark.django_db(transaction=True)
def _shots_folder(tmp_path: Path) -> Path:
    """Where the screenshots go: docs/img/ only when asked to refresh them."""
    if os.environ.get("CLOACA_REFRESH_SCREENSHOTS", "") not in ("", "0"):
        return DOCS_IMG
    return tmp_path


def test_log_in_disable_a_trigger_and_read_its_history(live_server: Any, store: Any, tmp_path: Path) -> None:
    _need_browser()
    from django.contrib.auth.models import User

    from cloaca_celery.context import context_hash
    from cloaca_celery.store import NewExecution

    User.objects.create_superuser("ops", "ops@example.com", "correct horse battery")
    now = datetime.now(timezone.utc)
    for i, status in enumerate(["succeeded", "succeeded", "failed", "running"]):
        execution_id = str(uuid.uuid4())
        context = {"invoice": f"INV-{1040 + i}", "customer": ["Acme", "Zoë & Co", "Initech", "Umbrella"][i]}
        store.record_fire(NewExecution(execution_id, "invoice_watcher", "django_invoices", context,
                                       context_hash(context), [execution_id], now - timedelta(minutes=9 - i)),
                          claim=False, now=now.timestamp(), deadline=now.timestamp() + 600)
        if status == "running":
            store.start_step(execution_id, execution_id, now.timestamp(), now.timestamp() + 600)
        else:
            store.finish_execution(execution_id, status,
                                   "ValueError: invoice total is negative" if status == "failed" else None,
                                   now - timedelta(minutes=8 - i, seconds=30))
    store.get_schedule("nightly_report")
    from django_cloaca.models import TriggerSchedule

    TriggerSchedule.objects.filter(pk="nightly_report").update(
        consecutive_errors=2, last_error="OperationalError: reporting database unreachable",
        last_poll_at=now - timedelta(minutes=3))
    TriggerSchedule.objects.filter(pk="invoice_watcher").update(
        last_poll_at=now - timedelta(seconds=2), last_fire_at=now - timedelta(minutes=6))

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    shots = _shots_folder(tmp_path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1880, "height": 760})
            page.goto(f"{live_server.url}/admin/django_cloaca/triggerschedule/")
            assert "/admin/login/" in page.url
            page.fill("#id_username", "ops")
            page.fill("#id_password", "correct horse battery")
            page.click("input[type=submit]")
            page.wait_for_selector("#result_list")
            assert "invoice_watcher" in page.inner_text("#result_list")
            page.screenshot(path=str(shots / "admin-triggers.png"), full_page=True)

            row = page.locator("#result_list tr", has_text="invoice_watcher")
            row.locator("input.action-select").check()
            page.select_option("select[name=action]", "disable_triggers")
            page.click("button[name=index]")
            page.wait_for_selector("textarea[name=note]")  # the action asks why first
            page.fill("textarea[name=note]", "Supplier API down until Monday (ticket OPS-231)")
            page.screenshot(path=str(shots / "admin-disable-note.png"), full_page=True)
            page.click("input[name=confirm]")
            page.wait_for_selector(".messagelist")
            assert "1 trigger(s) disabled" in page.inner_text(".messagelist")
            paused = page.inner_text("#result_list tr:has-text('invoice_watcher')")
            assert "by ops, " in paused and "Supplier API down until Mo" in paused
            page.screenshot(path=str(shots / "admin-trigger-disabled.png"), full_page=True)
            row_after = TriggerSchedule.objects.get(pk="invoice_watcher")
            assert (row_after.enabled, row_after.paused_by) == (False, "ops")

            # Preview from the trigger's page: a worker evaluates it (eagerly here) and fires nothing.
            from tests.django_project import triggers as project_triggers

            project_triggers.SWITCHES["invoice"] = "INV-1051"
            try:
                page.goto(f"{live_server.url}/admin/django_cloaca/triggerschedule/invoice_watcher/change/")
                page.click("a.cloaca-preview-link")
                page.click("input[name=preview]")
                page.wait_for_selector("#cloaca-preview-result")
                assert page.get_attribute("#cloaca-preview-result", "data-result") == "fire"
                assert "INV-1051" in page.inner_text("#cloaca-preview-result pre.cloaca-json")
                page.screenshot(path=str(shots / "admin-preview.png"), full_page=True)
            finally:
                project_triggers.SWITCHES["invoice"] = None
            assert store.execution_history("invoice_watcher", status="queued") == []
            page.goto(f"{live_server.url}/admin/django_cloaca/triggerschedule/")

            page.locator("#result_list tr", has_text="invoice_watcher").get_by_text("executions").click()
            page.wait_for_selector("#result_list")
            history = page.inner_text("#result_list")
            assert history.count("invoice_watcher") == 4 and "failed" in history
            page.screenshot(path=str(shots / "admin-history.png"), full_page=True)

            page.locator("#result_list tbody th a").first.click()
            page.wait_for_selector("pre.cloaca-json")
            assert "INV-" in page.inner_text("pre.cloaca-json")
            page.screenshot(path=str(shots / "admin-execution.png"), full_page=True)
        finally:
            browser.close()
    for name in ("admin-triggers", "admin-disable-note", "admin-trigger-disabled", "admin-preview",
                 "admin-history", "admin-execution"):
        assert (shots / f"{name}.png").stat().st_size > 10_000


def _a_day_of_counts(store: Any, trigger: str, now: float) -> None:
    """A day of one trigger's health rows, from two worker processes, as their flushes write them
    (the last poll a second ago): mostly skips, a fire now and then, some held back, and a bad
    quarter of an hour every eight hours."""
    from cloaca_celery.counters import HealthCounter, HealthCounts

    start = now - now % 60 - 24 * 3600
    for process in ("worker-1:101:aa", "worker-2:102:bb"):
        rows: list[HealthCounts] = []
        rows_until = 0.0
        for minute in range(24 * 60 + 1):
            at = min(start + minute * 60 + (7 if process.startswith("worker-1") else 37), now - 1)
            if at <= rows_until:
                break
            rows_until = at
            counter = HealthCounter(lambda _, found, into=rows: into.extend(found), lambda at=at: at, 3600.0)
            bad = 300 <= minute % 480 < 315
            for poll in range(6):
                outcome = "error" if bad and poll < 2 else "fired" if (minute + poll) % 17 == 0 else (
                    "deduplicated" if (minute + poll) % 23 == 0 else "skipped")
                counter.poll(trigger, outcome, "skip", at - 0.003 - poll * 0.001, at)
            if bad:
                counter.count(trigger, at, late=2)
            counter.latency(trigger, at - 0.04, at)
            counter.flush()
        store.save_health(process, rows)


def test_the_admin_charts_a_triggers_health_and_marks_the_unhealthy(
    live_server: Any, store: Any, tmp_path: Path,
) -> None:
    _need_browser()
    from django.contrib.auth.models import User

    from django_cloaca.models import TriggerSchedule

    User.objects.create_superuser("ops", "ops@example.com", "correct horse battery")
    now = datetime.now(timezone.utc)
    _a_day_of_counts(store, "invoice_watcher", store.now())
    # Polled a second ago; every minute, so that starting the browser (seconds on a busy machine) does not
    # pass 3 intervals and make it "not polled" before the page is read.
    TriggerSchedule.objects.filter(pk="invoice_watcher").update(poll_interval=60.0)
    TriggerSchedule.objects.filter(pk="nightly_report").update(
        consecutive_errors=3, last_error="OperationalError: reporting database unreachable",
        last_poll_at=now - timedelta(minutes=3))

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    shots = _shots_folder(tmp_path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{live_server.url}/admin/login/?next=/admin/django_cloaca/triggerschedule/")
            page.fill("#id_username", "ops")
            page.fill("#id_password", "correct horse battery")
            page.click("input[type=submit]")
            page.wait_for_selector("#result_list")
            marks = {name: page.locator("#result_list tr", has_text=name).locator(".cloaca-health")
                     .inner_text() for name in ("invoice_watcher", "nightly_report")}
            assert marks == {"invoice_watcher": "ok", "nightly_report": "unhealthy"}
            reason = page.locator("#result_list tr", has_text="nightly_report").locator(".cloaca-health")
            assert "its last 3 polls failed" in (reason.get_attribute("title") or "")

            page.locator("#result_list tr", has_text="invoice_watcher").locator("th a").click()
            page.wait_for_selector("svg.cloaca-health-chart")
            charts = page.locator("svg.cloaca-health-chart")
            assert charts.count() == 2
            hour_bars = charts.nth(0).locator("g.cloaca-bar")
            assert hour_bars.count() == 60
            assert sum(int(hour_bars.nth(i).get_attribute("data-polls") or 0) for i in range(60)) > 0
            assert charts.nth(1).locator("rect[data-series=errors]").count() > 0  # the bad quarters show
            box = charts.nth(0).bounding_box()
            assert box is not None and box["width"] > 600 and box["height"] > 100  # drawn, not collapsed
            page.locator(".cloaca-health-charts").screenshot(path=str(shots / "admin-health.png"))
        finally:
            browser.close()
    assert (shots / "admin-health.png").stat().st_size > 10_000
