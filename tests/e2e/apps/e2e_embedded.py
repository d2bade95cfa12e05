"""The embedded default: no broker configured, so everything lives under E2E_HOME."""

from __future__ import annotations

import json
import os
from pathlib import Path

from celery import Celery

import cloaca_celery as cloaca

HOME = Path(os.environ["E2E_HOME"])
INBOX = HOME.parent / "inbox"
OUTBOX = HOME.parent / "outbox"

app = Celery("e2e_embedded")
cloaca.install(app, home=str(HOME))


@cloaca.task()
def process(context: cloaca.Context) -> cloaca.Context:
    context["size"] = len(Path(context["path"]).read_text())
    return context


@cloaca.task(dependencies=[process])
def report(context: cloaca.Context) -> None:
    OUTBOX.mkdir(exist_ok=True)
    (OUTBOX / f"{context['name']}.json").write_text(json.dumps(context.to_dict()))


with cloaca.WorkflowBuilder("process_file") as builder:
    builder.add_task(process)
    builder.add_task(report)


@cloaca.trigger(workflow="process_file", poll_interval="200ms")
def inbox_watcher() -> cloaca.TriggerResult:
    for path in sorted(INBOX.glob("*.txt")):
        done = path.with_suffix(".seen")
        path.rename(done)
        return cloaca.TriggerResult.fire({"name": path.stem, "path": str(done)})
    return cloaca.TriggerResult.skip()
