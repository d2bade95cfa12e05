"""`celery -A proj cloaca ...` as a user runs it: a real celery command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cloaca_celery.sqlstore import SqlStore
from cloaca_celery.store import NewExecution

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))}
    env.update(CLI_DATABASE_URL=url, PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "cliapp"), str(REPO)]))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "celery", "-A", "cli_proj", "cloaca", *args],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )

    run.url = url  # type: ignore[attr-defined]
    return run


def _one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode != 0
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in done.stderr
    assert any(all(n in line for n in needles) for line in lines), done.stderr


def test_list_shows_every_trigger_from_code(cli) -> None:  # type: ignore[no-untyped-def]
    done = cli("list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NAME", "WORKFLOW", "INTERVAL", "ENABLED", "LAST", "POLL", "LAST", "FIRE",
                                "ERRORS"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["always_fires"][:4] == ["always_fires", "cli_workflow", "30s", "yes"]
    assert rows["never_fires"][2] == "1m"


def test_enable_disable_round_trip_and_unknown_names(cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("disable", "never_fires").stdout.strip() == "never_fires: disabled"
    store = SqlStore(cli.url)
    try:
        assert store.get_schedule("never_fires")["enabled"] is False
        assert cli("enable", "never_fires").returncode == 0
        assert store.get_schedule("never_fires")["enabled"] is True
    finally:
        store.close()
    _one_line_error(cli("disable", "no_such"), "unknown trigger 'no_such'")
    _one_line_error(cli("enable", "no_such"), "unknown trigger 'no_such'")
    _one_line_error(cli("history", "no_such"), "unknown trigger 'no_such'")
    _one_line_error(cli("poll", "no_such"), "unknown trigger 'no_such'")


def test_poll_evaluates_once_without_enqueueing(cli) -> None:  # type: ignore[no-untyped-def]
    done = cli("poll", "always_fires")
    assert done.returncode == 0, done.stderr
    assert 'always_fires: fire {"order": "A-1", "seen": 0}' in done.stdout
    assert "nothing enqueued" in done.stdout
    assert cli("poll", "never_fires").stdout.startswith("never_fires: skip")
    _one_line_error(cli("poll", "broken"), "broken: RuntimeError: sensor offline")
    store = SqlStore(cli.url)
    try:
        assert store.execution_history("always_fires") == []
    finally:
        store.close()


def test_history_lists_newest_first_with_limit_and_status(cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("list").returncode == 0
    store = SqlStore(cli.url)
    base = datetime.now(timezone.utc) - timedelta(hours=1)
    ids = []
    try:
        for i, status in enumerate(["succeeded", "failed", "succeeded"]):
            eid = str(uuid.uuid4())
            ids.append(eid)
            store.record_fire(NewExecution(eid, "always_fires", "cli_workflow", {"n": i}, f"h{i}", [eid],
                                           base + timedelta(minutes=i)), None, 0.0)
            store.finish_execution(eid, status, "ValueError: bad row" if status == "failed" else None,
                                   base + timedelta(minutes=i, seconds=5))
    finally:
        store.close()
    done = cli("history", "always_fires")
    assert done.returncode == 0, done.stderr
    body = done.stdout.splitlines()[1:]
    assert [line.split()[0] for line in body] == list(reversed(ids))
    assert "5.00s" in body[0]
    limited = cli("history", "always_fires", "--limit", "1").stdout.splitlines()[1:]
    assert [line.split()[0] for line in limited] == [ids[2]]
    failed = cli("history", "always_fires", "--status", "failed").stdout.splitlines()[1:]
    assert len(failed) == 1 and ids[1] in failed[0] and "ValueError: bad row" in failed[0]
    assert cli("history", "always_fires", "--status", "bogus").returncode == 2
    assert cli("history", "always_fires", "--limit", "0").returncode == 2


def test_check_migrate_and_prune(cli) -> None:  # type: ignore[no-untyped-def]
    done = cli("check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok    store reachable" in done.stdout and "serializers are JSON" in done.stdout
    assert cli("migrate").stdout.startswith("store up to date")
    store = SqlStore(cli.url)
    try:
        old = datetime.now(timezone.utc) - timedelta(days=40)
        eid = str(uuid.uuid4())
        store.record_fire(NewExecution(eid, "always_fires", "cli_workflow", {}, "h", [eid], old), None, 0.0)
        store.finish_execution(eid, "succeeded", None, old)
        done = cli("prune", "--older-than", "30d")
        assert done.returncode == 0 and done.stdout.startswith("deleted 1 execution(s)")
        with pytest.raises(KeyError):
            store.get_execution(eid)
    finally:
        store.close()
    bad = cli("prune", "--older-than", "soon")
    assert bad.returncode == 2 and "'soon' is not a duration" in bad.stderr


def test_check_fails_when_the_store_is_unreachable(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env_url = f"sqlite:///{tmp_path / 'missing-dir' / 'x' / 'db.sqlite'}"
    (tmp_path / "missing-dir").write_text("a file where a folder should be")
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "cli_proj", "cloaca", "check"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))},
             "CLI_DATABASE_URL": env_url,
             "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "cliapp"), str(REPO)])},
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "FAIL" in done.stdout and "store" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
