"""docs/cli.md shows real output: every ``$ celery -A proj cloaca ...`` block is what the command prints.

The blocks are run against the test project ``tests/cliapp/cli_proj.py`` with a
store in a known state (one trigger whose polls keep failing, one with three
executions). Times, execution ids and the store's path differ from run to run
and the columns' widths follow them, so both sides are compared with those
replaced and runs of spaces squeezed; everything else must match line for line.

``CLOACA_REFRESH_DOCS=1`` rewrites the blocks with this run's output instead
(then review the diff of docs/cli.md).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cloaca_celery.counters import HealthCounter, HealthCounts
from cloaca_celery.sqlstore import SqlStore, schedules
from cloaca_celery.store import NewExecution

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "cli.md"
PROMPT = "$ celery -A proj cloaca "
EXIT_SUFFIX = '; echo "exit $?"'
BLOCK = re.compile(r"```text\n(.*?)```", re.S)

VARYING = [
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?(\+00:00| UTC)?"), "<time>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<id>"),
    (re.compile(r"sqlite:///\S+?\.db"), "<store>"),
    (re.compile(r'"took_ms": [0-9.]+'), '"took_ms": <ms>'),
    # How long since the counts written before the commands ran: it grows while they run (on a
    # busy machine, past the half minute that turns "10m" into "11m").
    (re.compile(r"not polled for [0-9.]+[smhd] "), "not polled for <idle> "),
]


def normalized(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        for pattern, placeholder in VARYING:
            line = pattern.sub(placeholder, line)
        out.append(" ".join(line.split()))
    return out


def blocks(text: str) -> list[tuple[re.Match[str], list[tuple[str, list[str]]]]]:
    """The page's blocks of ``proj`` commands: (match, [(command line, its printed lines)])."""
    found = []
    for match in BLOCK.finditer(text):
        lines = match.group(1).splitlines()
        if not lines or not lines[0].startswith(PROMPT):
            continue
        runs: list[tuple[str, list[str]]] = []
        for line in lines:
            if line.startswith(PROMPT):
                runs.append((line, []))
            else:
                runs[-1][1].append(line)
        for _command, printed in runs:
            while printed and not printed[-1].strip():
                printed.pop()
        found.append((match, runs))
    return found


def known_state(url: str) -> None:
    """The store the page's examples show: three executions of ``always_fires``, ``broken`` failing,
    and two minutes of health counts."""
    store = SqlStore(url)
    base = datetime.now(timezone.utc) - timedelta(hours=1)
    try:
        for i, (status, error) in enumerate([("succeeded", None), ("failed", "ValueError: bad row"),
                                             ("succeeded", None)]):
            eid = str(uuid.uuid4())
            store.record_fire(
                NewExecution(eid, "always_fires", "cli_workflow", {"order": f"A-{i + 1}", "seen": i},
                             f"h{i}", [eid], base + timedelta(minutes=i)),
                claim=False, now=0.0, deadline=600.0,
            )
            store.finish_execution(eid, status, error, base + timedelta(minutes=i, seconds=2))
        with store.engine.begin() as conn:
            conn.execute(schedules.update().where(schedules.c.trigger_name == "broken").values(
                consecutive_errors=4, last_error="RuntimeError: sensor offline",
                last_error_at=datetime.now(timezone.utc)))
            conn.execute(schedules.update().where(schedules.c.trigger_name == "always_fires").values(
                last_poll_at=base + timedelta(minutes=2), last_fire_at=base + timedelta(minutes=2)))
        store.save_health("worker-1:4242:0a1b2c3d", counted_polls())
    finally:
        store.close()


def counted_polls() -> list[HealthCounts]:
    """What a worker process counted of ``always_fires`` and ``never_fires`` 30 and 10 minutes ago."""
    rows: list[HealthCounts] = []
    for minutes_ago in (30, 10):
        at = (datetime.now(timezone.utc) - timedelta(minutes=minutes_ago)).timestamp()
        counter = HealthCounter(lambda _, found: rows.extend(found), lambda at=at: at, 3600.0)
        for n in range(12):
            counter.poll("never_fires", "skipped", "skip", at - 0.003, at)
            counter.poll("always_fires", "fired" if n == 0 else "deduplicated", "skip", at - 0.04, at)
        counter.latency("always_fires", at - 0.02, at)
        counter.count("never_fires", at, late=1)
        counter.flush()
    return rows


@pytest.mark.slow  # a celery command per block of the page
def test_every_command_shown_in_the_cli_page_prints_what_the_page_shows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))}
    env.update(CLI_DATABASE_URL=url, COLUMNS="200",
               PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "cliapp"), str(REPO)]))

    def run(command: str) -> list[str]:
        shown = command[len("$ "):]
        with_exit = shown.endswith(EXIT_SUFFIX)
        args = shlex.split(shown.removesuffix(EXIT_SUFFIX))
        assert args[:3] == ["celery", "-A", "proj"], command
        done = subprocess.run([sys.executable, "-m", "celery", "-A", "cli_proj", *args[3:]], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert "Traceback" not in done.stderr, done.stderr
        printed = done.stdout.rstrip("\n").splitlines()
        if with_exit:
            printed.append(f"exit {done.returncode}")
        else:
            assert done.returncode == 0, (command, done.stdout, done.stderr)
        return printed

    assert run(PROMPT + "migrate")
    known_state(url)
    text = PAGE.read_text(encoding="utf-8")
    found = blocks(text)
    assert len(found) >= 2, "docs/cli.md lost its examples"
    commands = [command for _match, runs in found for command, _printed in runs]
    for needed in ("list", "show", "history", "check", "stats"):
        assert any(c.startswith(PROMPT + needed) for c in commands), f"docs/cli.md shows no `{needed}`"

    refresh = os.environ.get("CLOACA_REFRESH_DOCS") == "1"
    pieces, at = [], 0
    for match, runs in found:
        real: list[str] = []
        for command, printed in runs:
            got = run(command)
            if refresh:
                got = [line.replace(url, "sqlite:////srv/proj/cloaca.db") for line in got]
                if normalized(got) == normalized(printed):
                    got = printed  # only the times and ids differ: keep the page as it is
            else:
                assert normalized(got) == normalized(printed), (
                    f"docs/cli.md shows other output for `{command}` than it prints now "
                    f"(CLOACA_REFRESH_DOCS=1 rewrites the page):\n" + "\n".join(got))
            real += ([""] if real else []) + [command, *got]
        pieces += [text[at:match.start(1)], "\n".join(real) + "\n"]
        at = match.end(1)
    if refresh:
        PAGE.write_text("".join(pieces) + text[at:], encoding="utf-8")
