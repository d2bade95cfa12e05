"""``celery -A proj cloaca ...``: list, switch, inspect and poll triggers from the shell.

Registered through the ``celery.commands`` entry point, so it runs with the
app, configuration and store that ``-A proj`` names. Errors (unknown
trigger, bad argument, unreachable store) exit non-zero with one line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import click
from celery import Celery

from .dispatch import DISPATCH_TASK, POLL_TASK
from .durations import format_duration, parse_duration
from .errors import CloacaError, UnknownTriggerError
from .installation import SWEEP_TASK, Installation, get_installation
from .polling import evaluate, spec_of
from .store import STATUSES
from .triggers import triggers


def _installation(ctx: click.Context) -> Installation:
    app: Celery = ctx.obj.app
    try:
        installation = get_installation(app)
    except CloacaError as exc:
        raise click.ClickException(str(exc)) from None
    app.loader.import_default_modules()
    return installation


_synced: set[int] = set()


def _synced_store(installation: Installation) -> Any:
    """The store, with rows for the triggers this process defines (never pruning others)."""
    store = installation.store
    if id(installation) not in _synced:
        store.sync_triggers([spec_of(d) for d in triggers], time.time(), prune=False)
        _synced.add(id(installation))
    return store


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join([line.rstrip(), *(b.rstrip() for b in body)])


def _store_call(installation: Installation, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``store.<method>``; every failure, opening the store included, becomes one line."""
    try:
        return getattr(_synced_store(installation), method)(*args, **kwargs)
    except UnknownTriggerError as exc:
        raise click.ClickException(f"{exc} ('cloaca list' shows the triggers it has)") from None
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc)) from None
    except CloacaError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any store failure becomes one line
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise click.ClickException(
            f"{what}: the store could not be reached: {type(exc).__name__}: {first_line}"
        ) from None


@click.group(name="cloaca")
@click.pass_context
def cloaca(ctx: click.Context) -> None:
    """Event-driven workflow triggers (cloaca-celery)."""


@cloaca.command(name="list")
@click.pass_context
def list_triggers(ctx: click.Context) -> None:
    """Every trigger: workflow, interval, enabled, last poll/fire, errors."""
    inst = _installation(ctx)
    schedules = _store_call(inst, "list", "list_schedules")
    rows = [
        [s["trigger_name"], s["workflow"], format_duration(s["poll_interval"]),
         "yes" if s["enabled"] else "no", _when(s["last_poll_at"]), _when(s["last_fire_at"]),
         str(s["consecutive_errors"]) + ("" if s["registered"] else " (not in code)")]
        for s in schedules
    ]
    click.echo(_table(["name", "workflow", "interval", "enabled", "last poll", "last fire", "errors"], rows))


@cloaca.command()
@click.argument("name")
@click.pass_context
def enable(ctx: click.Context, name: str) -> None:
    """Switch trigger NAME on (from its next poll, no restart)."""
    inst = _installation(ctx)
    _store_call(inst, "enable", "set_enabled", name, True)
    click.echo(f"{name}: enabled")


@cloaca.command()
@click.argument("name")
@click.pass_context
def disable(ctx: click.Context, name: str) -> None:
    """Switch trigger NAME off (from its next poll, no restart)."""
    inst = _installation(ctx)
    _store_call(inst, "disable", "set_enabled", name, False)
    click.echo(f"{name}: disabled")


@cloaca.command()
@click.argument("name")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--status", type=click.Choice(STATUSES))
@click.pass_context
def history(ctx: click.Context, name: str, limit: int, status: str | None) -> None:
    """Executions of trigger NAME, newest first."""
    inst = _installation(ctx)
    _store_call(inst, "history", "get_schedule", name)
    rows_in = _store_call(inst, "history", "execution_history", name, limit=limit, status=status)
    rows = []
    for e in rows_in:
        took = "-"
        if e["completed_at"] is not None:
            took = f"{(e['completed_at'] - e['started_at']).total_seconds():.2f}s"
        error = (e["error"] or "").splitlines()[0][:60] if e["error"] else ""
        rows.append([e["execution_id"], e["status"], _when(e["started_at"]), _when(e["completed_at"]), took,
                     json.dumps(e["context"], sort_keys=True, ensure_ascii=False)[:50], error])
    click.echo(_table(["execution", "status", "started", "completed", "took", "context", "error"], rows))


@cloaca.command()
@click.argument("name")
@click.option("--fire", is_flag=True, help="Poll through cloaca.poll on a worker (may really fire).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait with --fire.")
@click.pass_context
def poll(ctx: click.Context, name: str, fire: bool, timeout: float) -> None:
    """Evaluate trigger NAME once here and print what it returns (nothing is enqueued).

    With --fire, send the cloaca.poll task that beat's dispatcher sends and
    print its outcome: the same lease, dedup claim and history as a scheduled poll.
    """
    inst = _installation(ctx)
    try:
        definition = triggers.get(name)
    except UnknownTriggerError as exc:
        raise click.ClickException(str(exc)) from None
    if fire:
        result = inst.app.send_task(POLL_TASK, args=(name,), ignore_result=False)
        try:
            report = result.get(timeout=timeout, propagate=True)
        except Exception as exc:  # noqa: BLE001 - a timeout or a worker error, in one line
            raise click.ClickException(
                f"{name}: no outcome from a worker within {timeout:g}s: {exc}"
            ) from None
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    state: dict[str, Any] = {}
    if definition.takes_state:
        state = dict(_store_call(inst, "poll", "get_schedule", name)["state"])
    started = time.monotonic()
    try:
        outcome = evaluate(definition, state)
    except Exception as exc:  # noqa: BLE001 - the trigger's own error, in one line
        raise click.ClickException(f"{name}: {type(exc).__name__}: {exc}") from None
    took = time.monotonic() - started
    if outcome.is_skip_result():
        click.echo(f"{name}: skip ({took * 1000:.1f} ms)")
    else:
        context = outcome.context.to_dict() if outcome.context is not None else {}
        shown = json.dumps(context, sort_keys=True, ensure_ascii=False)
        click.echo(f"{name}: fire {shown} ({took * 1000:.1f} ms; "
                   "nothing enqueued, use --fire)")


@cloaca.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Check triggers, workflows, serializers, store and beat entries; exit 1 on a problem."""
    inst = _installation(ctx)
    problems = list(inst.check())
    try:
        settings = inst.settings
        _store_call(inst, "check", "list_schedules")
        click.echo(f"ok    store reachable ({getattr(inst.store, 'url', type(inst.store).__name__)})")
    except (click.ClickException, CloacaError) as exc:
        problems.append(str(exc.message if isinstance(exc, click.ClickException) else exc))
        settings = None
    beat = inst.app.conf.beat_schedule or {}
    for entry in (DISPATCH_TASK, SWEEP_TASK):
        if entry not in beat:
            problems.append(f"beat entry {entry!r} missing: is install(app) called before beat starts?")
    if settings is not None:
        click.echo(f"ok    {len(triggers)} trigger(s); dispatch every {inst.dispatch_interval():g}s")
    for problem in problems:
        click.echo(f"FAIL  {problem}")
    if problems:
        raise click.exceptions.Exit(1)
    click.echo("ok    serializers are JSON; every trigger's workflow is registered")


@cloaca.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade cloaca's tables in the store."""
    inst = _installation(ctx)
    _store_call(inst, "migrate", "ensure_schema")
    click.echo(f"store up to date ({getattr(inst.store, 'url', type(inst.store).__name__)})")


@cloaca.command()
@click.option("--older-than", "older_than", required=True, help="e.g. 30d, 12h")
@click.pass_context
def prune(ctx: click.Context, older_than: str) -> None:
    """Delete ended executions completed more than --older-than ago."""
    inst = _installation(ctx)
    try:
        seconds = parse_duration(older_than, "--older-than")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=seconds)
    count = _store_call(inst, "prune", "prune_executions", cutoff)
    click.echo(f"deleted {count} execution(s) completed before {_when(cutoff)} UTC")
