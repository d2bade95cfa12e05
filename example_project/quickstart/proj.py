"""A whole cloaca-celery project on the embedded default: no server to install.

No broker is configured, so ``install(app)`` keeps the broker (kombu's
``filesystem://``), the results (SQLite) and the trigger store (SQLite) in
``./.cloaca``. Run it with ``celery -A proj worker -B`` from this folder, or
``make demo`` from the repository root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from celery import Celery

import cloaca_celery as cloaca

HERE = Path(os.environ.get("CLOACA_DEMO_DIR", Path(__file__).resolve().parent))
INBOX = HERE / "inbox"
OUTBOX = HERE / "outbox"

app = Celery("proj")
cloaca.install(app, home=str(HERE / ".cloaca"))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@cloaca.task()
def count_lines(context: cloaca.Context) -> cloaca.Context:
    text = (INBOX / context["filename"]).read_text()
    context["lines"] = len(text.splitlines())
    return context


@cloaca.task(dependencies=[count_lines])
def archive(context: cloaca.Context) -> cloaca.Context:
    OUTBOX.mkdir(exist_ok=True)
    shutil.move(str(INBOX / context["filename"]), OUTBOX / context["filename"])
    context["archived_to"] = str(OUTBOX / context["filename"])
    return context


with cloaca.WorkflowBuilder("file_processor") as builder:
    builder.description("Count the lines of a new file, then archive it")
    builder.add_task(count_lines)
    builder.add_task(archive)


@cloaca.trigger(workflow="file_processor", name="file_watcher", poll_interval="500ms")
def file_watcher() -> cloaca.TriggerResult:
    """Fire once per file that lands in ./inbox; the hash identifies the file's contents."""
    for path in sorted(INBOX.glob("*.txt")):
        ctx = cloaca.Context({"filename": path.name, "file_hash": sha256_of(path)})
        return cloaca.TriggerResult.fire(ctx)
    return cloaca.TriggerResult.skip()
