"""Triggers and a workflow of the Django test project, driven by module-level switches."""

from __future__ import annotations

from typing import Any

import cloaca_celery as cloaca

SWITCHES: dict[str, Any] = {"invoice": None}


@cloaca.task(id="django_record")
def record(context: cloaca.Context) -> cloaca.Context:
    context["recorded"] = True
    return context


with cloaca.WorkflowBuilder("django_invoices") as builder:
    builder.add_task(record)


@cloaca.trigger(workflow="django_invoices", name="invoice_watcher", poll_interval="5s")
def invoice_watcher() -> cloaca.TriggerResult:
    invoice = SWITCHES["invoice"]
    if invoice is None:
        return cloaca.TriggerResult.skip()
    return cloaca.TriggerResult.fire({"invoice": invoice})


@cloaca.trigger(workflow="django_invoices", name="nightly_report", poll_interval="1h")
def nightly_report() -> bool:
    return False
