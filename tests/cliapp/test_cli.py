"""`celery -A proj cloaca ...` as a user runs it: a real celery command in a subprocess."""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import sys
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cloaca_celery.counters import HealthCounter, HealthCounts
from cloaca_celery.sqlstore import SqlStore, schedules
from cloaca_celery.store import NewExecution
from tests.support.sqlite import migrated_sqlite

EX_USAGE, EX_UNAVAILABLE = 64, 69

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = migrated_sqlite(tmp_path / "cli.db")  # each command need not migrate a fresh file first
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
                                "ERRORS", "PAUSED"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["always_fires"][:4] == ["always_fires", "cli_workflow", "30s", "yes"]
    assert rows["never_fires"][2] == "1m"


def test_enable_disable_round_trip_and_unknown_names(cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("disable", "never_fires", "--by", "ops").stdout.strip() == "never_fires: disabled by ops"
    store = SqlStore(cli.url)
    try:
        assert store.get_schedule("never_fires")["enabled"] is False
        assert cli("enable", "never_fires").returncode == 0
        assert store.get_schedule("never_fires")["enabled"] is True
    finally:
        store.close()
    unknown = cli("disable", "no_such")
    assert unknown.returncode == EX_USAGE
    _one_line_error(unknown, "unknown trigger 'no_such'")
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


def test_disable_records_who_when_and_why_and_list_show_and_enable_tell(cli) -> None:  # type: ignore[no-untyped-def]
    done = cli("disable", "never_fires", "--note", "supplier API down until Monday")
    assert done.returncode == 0, done.stderr
    who = getpass.getuser()
    assert done.stdout.strip() == f"never_fires: disabled by {who}"
    listed = cli("list").stdout.splitlines()
    row = next(line for line in listed if line.startswith("never_fires"))
    assert row.split()[3] == "no"
    assert f"by {who} at " in row and row.endswith(": supplier API down until Monday")
    assert next(line for line in listed if line.startswith("always_fires")).endswith("-")
    schedule = json.loads(cli("show", "never_fires", "--json").stdout)
    assert (schedule["enabled"], schedule["paused_by"], schedule["pause_note"]) == (
        False, who, "supplier API down until Monday")
    paused_at = datetime.fromisoformat(schedule["paused_at"])
    assert abs((paused_at - datetime.now(timezone.utc)).total_seconds()) < 300
    shown = cli("show", "never_fires").stdout
    assert "pause note       supplier API down until Monday" in shown
    assert f"paused by        {who}" in shown and f"paused at        {paused_at:%Y-%m-%d %H:%M:%S}" in shown
    by_flag = cli("disable", "never_fires", "--by", "on-call: Bob", "--note", "again")
    assert by_flag.stdout.strip() == "never_fires: disabled by on-call: Bob"
    assert json.loads(cli("show", "never_fires", "--json").stdout)["paused_by"] == "on-call: Bob"
    too_long = cli("disable", "never_fires", "--note", "x" * 1001)
    assert too_long.returncode == EX_USAGE
    _one_line_error(too_long, "'never_fires'", "at most 1000")

    assert cli("enable", "never_fires").stdout.strip() == "never_fires: enabled"
    cleared = json.loads(cli("show", "never_fires", "--json").stdout)
    assert [cleared[k] for k in ("enabled", "paused_at", "paused_by", "pause_note")] == [True, *[None] * 3]
    assert "pause" not in cli("show", "never_fires").stdout  # an enabled trigger has no pause to show


def test_poll_json_gives_the_preview_shape_and_worker_needs_a_result_backend(cli) -> None:  # type: ignore[no-untyped-def]
    keys = {"trigger_name", "result", "context", "reason", "error", "took_ms", "workflow", "enabled",
            "dedup_hash", "held_by", "worker"}
    fired = json.loads(cli("poll", "always_fires", "--json").stdout)
    assert set(fired) == keys
    assert (fired["result"], fired["context"], fired["error"], fired["worker"]) == (
        "fire", {"order": "A-1", "seen": 0}, None, None)
    assert fired["reason"] == "a poll now would start workflow 'cli_workflow'" and fired["held_by"] is None
    skipped = json.loads(cli("poll", "never_fires", "--json").stdout)
    assert (skipped["result"], skipped["context"]) == ("skip", None)
    assert "returned skip" in skipped["reason"]
    broken = cli("poll", "broken", "--json")
    assert broken.returncode == 1
    assert json.loads(broken.stdout)["error"] == "RuntimeError: sensor offline"
    # This app has no result backend: a preview on a worker cannot come back, and says so in one line.
    no_backend = cli("poll", "never_fires", "--worker", "--timeout", "5")
    assert no_backend.returncode == EX_UNAVAILABLE
    _one_line_error(no_backend, "never_fires: no outcome from a worker", "result backend")
    both = cli("poll", "never_fires", "--worker", "--fire")
    assert both.returncode == EX_USAGE and "not both" in both.stderr
    store = SqlStore(cli.url)
    try:
        assert store.execution_history("always_fires") == []
        assert store.list_schedules() == []  # not even a schedule row: a preview writes nothing
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
                                           base + timedelta(minutes=i)), claim=False, now=0.0, deadline=600.0)
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
    assert cli("history", "always_fires", "--status", "bogus").returncode == EX_USAGE
    assert cli("history", "always_fires", "--limit", "0").returncode == EX_USAGE
    as_json = json.loads(cli("history", "always_fires", "--json").stdout)
    assert [row["execution_id"] for row in as_json] == list(reversed(ids))
    assert as_json[1]["status"] == "failed" and as_json[1]["error"] == "ValueError: bad row"
    assert datetime.fromisoformat(as_json[0]["started_at"]) == base + timedelta(minutes=2)


def test_check_migrate_and_prune(cli) -> None:  # type: ignore[no-untyped-def]
    done = cli("check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok    store reachable" in done.stdout and "serializers are JSON" in done.stdout
    assert cli("migrate").stdout.startswith("store up to date")
    store = SqlStore(cli.url)
    try:
        old = datetime.now(timezone.utc) - timedelta(days=40)
        eid = str(uuid.uuid4())
        store.record_fire(NewExecution(eid, "always_fires", "cli_workflow", {}, "h", [eid], old),
                          claim=False, now=0.0, deadline=600.0)
        store.finish_execution(eid, "succeeded", None, old)
        done = cli("prune", "--older-than", "30d")
        assert done.returncode == 0 and done.stdout.startswith("deleted 1 execution(s)"), done.stderr
        with pytest.raises(KeyError):
            store.get_execution(eid)
    finally:
        store.close()
    bad = cli("prune", "--older-than", "soon")
    assert bad.returncode == EX_USAGE and "'soon' is not a duration" in bad.stderr


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
    assert done.returncode == EX_UNAVAILABLE
    assert "FAIL" in done.stdout and "store" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def _failing(url: str, name: str, errors: int, error: str) -> None:
    """Record ``errors`` failed polls in a row on ``name``'s schedule, as the poller does."""
    store = SqlStore(url)
    try:
        with store.engine.begin() as conn:
            conn.execute(schedules.update().where(schedules.c.trigger_name == name).values(
                consecutive_errors=errors, last_error=error, last_error_at=datetime.now(timezone.utc)))
    finally:
        store.close()


def test_check_fails_naming_a_trigger_whose_polls_keep_failing(cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("check").returncode == 0
    _failing(cli.url, "broken", 1, "RuntimeError: sensor offline")
    once = cli("check")
    assert once.returncode == 0, once.stdout
    assert "WARN  trigger 'broken': its last poll failed" in once.stdout
    _failing(cli.url, "broken", 3, "RuntimeError: sensor offline\n  (second line of the error)")
    done = cli("check")
    assert done.returncode == 1, done.stdout
    line = next(x for x in done.stdout.splitlines() if x.startswith("FAIL"))
    assert "trigger 'broken': its last 3 polls failed" in line and "RuntimeError: sensor offline" in line
    report = json.loads(cli("check", "--json").stdout)
    assert report["ok"] is False and report["triggers"] == 3
    assert [p["trigger"] for p in report["problems"]] == ["broken"]


def test_list_errors_and_show_tell_why_a_trigger_fails(cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("list").returncode == 0
    _failing(cli.url, "broken", 2, "RuntimeError: sensor offline\nTraceback line two")
    listed = cli("list", "--errors").stdout.splitlines()
    assert listed[0].split()[-2:] == ["LAST", "ERROR"]
    row = next(x for x in listed if x.startswith("broken"))
    assert row.endswith("RuntimeError: sensor offline Traceback line two")
    assert next(x for x in listed if x.startswith("never_fires")).endswith("-")
    schedules_json = json.loads(cli("list", "--json").stdout)
    broken = next(s for s in schedules_json if s["trigger_name"] == "broken")
    assert broken["consecutive_errors"] == 2 and broken["last_error"].startswith("RuntimeError")
    shown = cli("show", "broken")
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(None, 1) for line in shown.stdout.splitlines() if line and line[0] != " "
                  and len(line.split(None, 1)) == 2)
    assert fields["trigger"] == "broken" and fields["workflow"] == "cli_workflow"
    assert "  RuntimeError: sensor offline" in shown.stdout and "  Traceback line two" in shown.stdout
    assert "errors in a row  2 (warning)" in shown.stdout
    assert json.loads(cli("show", "broken", "--json").stdout)["last_error"].endswith("line two")
    assert cli("show", "nope").returncode == EX_USAGE


def test_printed_values_cannot_drive_the_terminal(cli) -> None:  # type: ignore[no-untyped-def]
    """Control and bidi characters in errors and contexts are shown escaped, never sent raw."""
    assert cli("list").returncode == 0
    _failing(cli.url, "broken", 1, "bad\x1b[2J\u202eevil\x07")
    for args in (("list", "--errors"), ("show", "broken"), ("check",)):
        out = cli(*args).stdout
        assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out, args
        assert "bad\\x1b[2Jevil\\x07" in out, (args, out)
    done = cli("disable", "broken", "--note", "why\x1b[2J\u202enot\x07", "--by", "m\x1b[31mallory")
    assert done.returncode == 0, done.stderr
    for args in (("list",), ("show", "broken")):
        out = cli(*args).stdout
        assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out, args
        assert "why\\x1b[2Jnot\\x07" in out and "m\\x1b[31mallory" in out, (args, out)


def test_check_fails_when_no_trigger_is_found(tmp_path: Path) -> None:
    (tmp_path / "empty_proj.py").write_text(
        "from celery import Celery\nimport cloaca_celery as cloaca\n"
        "app = Celery('empty_proj', broker='memory://')\n"
        f"cloaca.install(app, database_url='sqlite:///{tmp_path / 'e.db'}')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO)])
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "empty_proj", "cloaca", "check"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL  no triggers found" in done.stdout and "triggers.py" in done.stdout


# -- health: stats, check's "not polled" rule, metrics -------------------------------


def _counted(url: str, process: str, trigger: str, at: datetime, skips: int, fires: int) -> None:
    """Write ``process``'s health row of ``trigger`` for the minute of ``at``, as a worker's flush does."""
    rows: list[HealthCounts] = []
    epoch = at.timestamp()
    counter = HealthCounter(lambda _, found: rows.extend(found), lambda: epoch, 3600.0)
    for _ in range(skips):
        counter.poll(trigger, "skipped", "skip", epoch - 0.002, epoch)
    for _ in range(fires):
        counter.poll(trigger, "fired", "skip", epoch - 0.03, epoch)
        counter.latency(trigger, epoch - 0.08, epoch)
    counter.flush()
    store = SqlStore(url)
    try:
        store.save_health(process, rows)
    finally:
        store.close()


def test_stats_sums_every_process_and_prints_json(cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("list").returncode == 0  # the schedule rows
    now = datetime.now(timezone.utc)
    _counted(cli.url, "host-a:1:aa", "never_fires", now - timedelta(minutes=2), skips=5, fires=0)
    _counted(cli.url, "host-b:2:bb", "never_fires", now - timedelta(minutes=2), skips=4, fires=0)
    _counted(cli.url, "host-b:2:bb", "always_fires", now - timedelta(seconds=5), skips=0, fires=2)
    _counted(cli.url, "host-b:2:bb", "always_fires", now - timedelta(hours=3), skips=0, fires=7)
    done = cli("stats", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert set(data) == {"since", "until", "triggers"}
    by_name = {entry["trigger_name"]: entry for entry in data["triggers"]}
    assert sorted(by_name) == ["always_fires", "broken", "never_fires"]
    assert (by_name["never_fires"]["polls"], by_name["never_fires"]["skips"]) == (9, 9)
    fires = by_name["always_fires"]
    assert (fires["polls"], fires["fires"], fires["held"]["skip"]) == (2, 2, 0)
    assert fires["latency_seconds"]["count"] == 2
    assert fires["latency_seconds"]["max"] == pytest.approx(0.08)
    assert by_name["broken"]["polls"] == 0 and by_name["broken"]["poll_seconds"]["p50"] is None
    assert "minutes" not in fires
    day = json.loads(cli("stats", "always_fires", "--since", "1d", "--json").stdout)
    [entry] = day["triggers"]
    assert entry["fires"] == 9 and [m["fires"] for m in entry["minutes"]] == [7, 2]
    table = cli("stats")
    assert table.returncode == 0, table.stderr
    row = next(line.split() for line in table.stdout.splitlines() if line.startswith("never_fires"))
    assert row[1:4] == ["9", "9", "0"]
    assert "p50 is approximate" in table.stdout
    _one_line_error(cli("stats", "no_such"), "unknown trigger 'no_such'")
    assert cli("stats", "--since", "soon").returncode == EX_USAGE


def _registered_long_ago(url: str, name: str) -> None:
    store = SqlStore(url)
    try:
        with store.engine.begin() as conn:
            long_ago = datetime.now(timezone.utc) - timedelta(hours=1)
            conn.execute(schedules.update().where(schedules.c.trigger_name == name).values(
                created_at=long_ago, updated_at=long_ago))
    finally:
        store.close()


def test_check_fails_naming_a_trigger_not_polled_for_three_intervals(cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("check").returncode == 0
    for name in ("always_fires", "never_fires", "broken"):
        _registered_long_ago(cli.url, name)
    now = datetime.now(timezone.utc)
    _counted(cli.url, "host-a:1:aa", "always_fires", now - timedelta(seconds=20), skips=1, fires=0)
    _counted(cli.url, "host-a:1:aa", "never_fires", now - timedelta(minutes=10), skips=1, fires=0)
    done = cli("check")
    assert done.returncode == 1, done.stdout
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 2, done.stdout
    # 10 minutes ago when counted; 11m if the commands took more than half a minute (a busy machine)
    assert any(re.search(r"trigger 'never_fires': not polled for 1[01]m", line) for line in failed), failed
    assert any("'broken': not polled" in line and "never polled" in line for line in failed)
    assert not any("always_fires" in line for line in failed)
    report = json.loads(cli("check", "--json").stdout)
    assert sorted(p["trigger"] for p in report["problems"]) == ["broken", "never_fires"]
    assert report["unhealthy_after_intervals"] == 3


def test_metrics_serves_the_sums_to_prometheus(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client.parser import text_string_to_metric_families

    assert cli("list").returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))}
    env.update(CLI_DATABASE_URL=cli.url,
               PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "cliapp"), str(REPO)]))
    server = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "cli_proj", "cloaca", "metrics", "--port", "0"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert "/metrics" in line, line + (server.stderr.read() if server.poll() is not None else "")
        url = line.split()[5]
        now = datetime.now(timezone.utc)
        _counted(cli.url, "host-a:1:aa", "never_fires", now, skips=3, fires=0)
        _counted(cli.url, "host-b:2:bb", "never_fires", now, skips=4, fires=1)
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode()
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
        }
        assert samples[("cloaca_store_up", ())] == 1.0
        labels = (("outcome", "skipped"), ("trigger", "never_fires"))
        assert samples[("cloaca_trigger_polls_total", labels)] == 7.0
        fired = (("outcome", "fired"), ("trigger", "never_fires"))
        assert samples[("cloaca_trigger_polls_total", fired)] == 1.0
        assert samples[("cloaca_trigger_poll_duration_seconds_count", (("trigger", "never_fires"),))] == 8.0
        assert samples[("cloaca_trigger_fire_latency_seconds_count", (("trigger", "never_fires"),))] == 1.0
        assert samples[("cloaca_trigger_unhealthy", (("trigger", "never_fires"),))] == 0.0
        assert ("cloaca_trigger_polls_total", (("outcome", "skipped"), ("trigger", "broken"))) in samples
    finally:
        server.terminate()
        server.wait(timeout=30)
    missing = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "cli_proj", "cloaca", "metrics", "--port", "70000"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert missing.returncode == EX_USAGE
