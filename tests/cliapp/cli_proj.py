"""A small app for the CLI tests: a SQLite store from CLI_DATABASE_URL, no broker needed."""

from __future__ import annotations

import os

from celery import Celery

import cloaca_celery as cloaca

app = Celery("cli_proj", broker="memory://")
cloaca.install(app, database_url=os.environ["CLI_DATABASE_URL"])


@cloaca.task(id="cli_step")
def cli_step(context: cloaca.Context) -> None:
    return None


with cloaca.WorkflowBuilder("cli_workflow") as builder:
    builder.add_task(cli_step)


@cloaca.trigger(workflow="cli_workflow", poll_interval="30s")
def always_fires(state: dict[str, int]) -> cloaca.TriggerResult:
    return cloaca.TriggerResult.fire({"order": "A-1", "seen": state.get("seen", 0)})


@cloaca.trigger(workflow="cli_workflow", poll_interval="1m")
def never_fires() -> bool:
    return False


@cloaca.trigger(workflow="cli_workflow", poll_interval="1m")
def broken() -> bool:
    raise RuntimeError("sensor offline")
