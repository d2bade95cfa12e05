"""The CLI against running processes: `poll --fire` goes through a real worker's cloaca.poll,
and `disable` stops a running trigger from its next interval, with no restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import APPS, REPO, CeleryProject, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def _cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_", "E2E_"))}
    full.update(env, PYTHONPATH=os.pathsep.join([str(APPS), str(REPO)]))
    return subprocess.run([sys.executable, "-m", "celery", "-A", "e2e_app", "cloaca", *args],
                          env=full, cwd=cwd, capture_output=True, text=True, timeout=90)


def test_poll_fire_runs_through_a_worker_and_disable_takes_effect_live(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, tmp_path: Path
) -> None:
    env = {
        "E2E_REDIS_URL": redis_url,
        "E2E_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "E2E_TRIGGERS": "fire_linear,every_500ms",
    }
    project = launch("e2e_app", **env)
    project.worker(concurrency=2).wait_for_log("ready", timeout=30)

    # Without beat nothing polls; `poll --fire` sends the real cloaca.poll and prints its report.
    redis_client.rpush("inbox:linear", "by-hand")
    done = _cli(env, tmp_path, "poll", "fire_linear", "--fire")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "fired" and report["trigger_name"] == "fire_linear"
    finished = wait_until(lambda: redis_client.lrange("wf:linear:done", 0, -1), 30, "the workflow", project)
    assert json.loads(finished[0])["item"] == "by-hand"
    history = _cli(env, tmp_path, "history", "fire_linear")
    assert report["execution_id"] in history.stdout

    # With beat running, `disable` stops the polls at the next interval; `enable` resumes them.
    project.beat()
    wait_until(lambda: redis_client.llen("polls:every_500ms") >= 3, 30, "polls of every_500ms", project)
    assert _cli(env, tmp_path, "disable", "every_500ms").returncode == 0
    off = time.time()
    time.sleep(3.5)  # seven intervals with the trigger off
    # A poll sent before the switch may still run, however late; no slot due after it is polled.
    slots = [json.loads(x) for x in redis_client.lrange("slots:every_500ms", 0, -1)]
    assert [p for p in slots if p["due"] > off] == [], "a disabled trigger was polled"
    paused_at = redis_client.llen("polls:every_500ms")
    assert _cli(env, tmp_path, "enable", "every_500ms").returncode == 0
    wait_until(lambda: redis_client.llen("polls:every_500ms") >= paused_at + 3, 20, "polling to resume",
               project)


def test_poll_worker_previews_on_a_real_worker_and_writes_nothing(
    launch: Callable[..., CeleryProject], redis_url: str, redis_client: Any, tmp_path: Path
) -> None:
    """The admin's "Preview" and `poll --worker` send cloaca.preview: a worker process evaluates the
    trigger, and no execution, claim, pending fire, poll time or error is written."""
    from cloaca_celery.sqlstore import SqlStore, claims, pending

    database = tmp_path / "store.db"
    env = {
        "E2E_REDIS_URL": redis_url,
        "E2E_DATABASE_URL": f"sqlite:///{database}",
        "E2E_TRIGGERS": "fire_linear,raises",
    }
    project = launch("e2e_app", **env)
    project.worker(concurrency=2, name="previewer").wait_for_log("ready", timeout=30)
    store = SqlStore(f"sqlite:///{database}")
    try:
        before = store.list_schedules()

        redis_client.rpush("inbox:linear", "seen-by-preview")
        done = _cli(env, tmp_path, "poll", "fire_linear", "--worker", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        fired = json.loads(done.stdout)
        assert (fired["result"], fired["context"], fired["error"]) == (
            "fire", {"item": "seen-by-preview", "total": 10}, None)
        assert fired["worker"].startswith("previewer-"), fired  # evaluated in the worker process
        assert fired["reason"] == "a poll now would start workflow 'linear'"
        assert redis_client.llen("inbox:linear") == 0  # the trigger function really ran, once

        skipped = json.loads(_cli(env, tmp_path, "poll", "fire_linear", "--worker", "--json").stdout)
        assert (skipped["result"], skipped["context"]) == ("skip", None)
        assert "returned skip" in skipped["reason"]
        failed = _cli(env, tmp_path, "poll", "raises", "--worker", "--json")
        assert failed.returncode == 1
        assert json.loads(failed.stdout)["error"] == "RuntimeError: boom from the raises trigger"
        text = _cli(env, tmp_path, "poll", "raises", "--worker")
        assert text.returncode == 1 and "raises: RuntimeError: boom from the raises trigger" in text.stderr

        # Nothing was written: no execution, claim or pending fire; the schedules are as they were.
        time.sleep(1.0)  # a workflow, had one been started, would have begun by now
        assert redis_client.llen("wf:linear:first") == 0
        assert store.execution_history("fire_linear") == []
        with store.engine.connect() as conn:
            assert conn.execute(claims.select()).all() == []
            assert conn.execute(pending.select()).all() == []
        assert store.list_schedules() == before
    finally:
        store.close()
