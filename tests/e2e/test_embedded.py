"""The embedded default: no broker configured, one `celery worker -B`, no server at all."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.harness import CeleryProject, wait_until

pytestmark = [pytest.mark.e2e]


def test_embedded_default_polls_and_runs_the_workflow_without_any_server(
    launch: Callable[..., CeleryProject], tmp_path: Path
) -> None:
    home = tmp_path / ".cloaca"
    (tmp_path / "inbox").mkdir()
    project = launch("e2e_embedded", E2E_HOME=str(home))
    worker = project.worker("-B", concurrency=2)
    worker.wait_for_log("ready", timeout=60)
    (tmp_path / "inbox" / "hello.txt").write_text("hello world")
    outbox = tmp_path / "outbox"

    def report() -> dict[str, object] | None:
        """The workflow's report once written whole (the step creates the file, then writes it)."""
        for path in outbox.glob("*.json") if outbox.exists() else []:
            try:
                loaded: dict[str, object] = json.loads(path.read_text())
                return loaded
            except json.JSONDecodeError:
                return None
        return None

    data: dict[str, object] = wait_until(report, 30, "the workflow's report", project)
    assert data["name"] == "hello" and data["size"] == 11 and data["trigger_name"] == "inbox_watcher"
    log = worker.log()
    assert "cloaca_celery.embedded:Transport" in log and "results.db" in log
    assert (home / "cloaca.db").exists() and (home / "broker" / "queue").is_dir()
    assert "Traceback" not in log, log
