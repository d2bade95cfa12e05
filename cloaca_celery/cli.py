"""``celery -A proj cloaca ...``: list, show, switch, inspect and poll triggers from the shell.

Registered through the ``celery.commands`` entry point and built like
Celery's own commands (``celery inspect``, ``celery purge``): Celery's
command and option classes, the app from ``ctx.obj.app``, ``--no-color``
honoured, ``--json`` on every command that lists something (the shapes are
in ``docs/cli.md``), and sysexits exit codes:

* ``0`` done; ``1`` ``check`` found a problem, or the trigger itself failed;
* ``64`` (EX_USAGE) a bad option or argument, an unknown trigger;
* ``69`` (EX_UNAVAILABLE) the store or the broker cannot be reached, or no
  worker answered;
* ``78`` (EX_CONFIG) cloaca's configuration is wrong.

Every error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn

import click
from celery import Celery
from celery.bin.base import CeleryCommand, CeleryOption, handle_preload_options
from celery.exceptions import CeleryCommandException

from .builtin_tasks import DISPATCH_TASK, SWEEP_TASK, send_manual_poll, send_preview
from .counters import HealthCounts, total
from .durations import format_duration, parse_duration
from .errors import CloacaError, ConfigurationError, UnknownTriggerError
from .health import (
    STALE_AFTER_INTERVALS,
    UNHEALTHY_AFTER_ERRORS,
    assess_all,
    assess_schedule,
    counted_since,
    slack_of,
)
from .installation import Installation, get_installation
from .preview import Preview, preview_trigger
from .store import STATUSES, Store
from .terminal import clip, printable, table
from .triggers import HOW_TRIGGERS_ARE_FOUND, triggers
from .workflows import workflows

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_CONFIG = 78



def _exit(message: str, code: int) -> NoReturn:
    raise CeleryCommandException(message=printable(message), exit_code=code)


class UsageError(click.UsageError):
    """A usage error with Celery's exit code, EX_USAGE (64), where click uses 2."""

    exit_code = EX_USAGE


class _SysexitsUsage:
    """Click's own usage errors (a bad option, an unknown command) leave with EX_USAGE too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)  # type: ignore[misc,no-any-return]
        except click.UsageError as exc:
            raise UsageError(exc.format_message(), exc.ctx) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except click.UsageError as exc:
            if isinstance(exc, UsageError):
                raise
            raise UsageError(exc.format_message(), exc.ctx) from None


class CloacaCommand(_SysexitsUsage, CeleryCommand):  # type: ignore[misc]
    """A ``celery cloaca`` subcommand."""


class CloacaGroup(_SysexitsUsage, click.Group):
    """The ``celery cloaca`` group: its subcommands are :class:`CloacaCommand`s."""

    command_class = CloacaCommand


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _echo_json(ctx: click.Context, data: object) -> None:
    ctx.obj.echo(json.dumps(data, default=_json_default, indent=2, sort_keys=True, ensure_ascii=False))


def _option(*names: str, **kwargs: Any) -> Callable[[Any], Any]:
    return click.option(*names, cls=CeleryOption, **kwargs)


def _json_flag(what: str) -> Callable[[Any], Any]:
    return _option("--json", "as_json", is_flag=True, help_group="Output Options",
                   help=f"Print {what} as JSON (shape in docs/cli.md).")


# -- the app, its installation and its store ------------------------------------


def _installation(ctx: click.Context) -> Installation:
    app: Celery = ctx.obj.app
    try:
        installation = get_installation(app)
    except CloacaError as exc:
        _exit(str(exc), EX_CONFIG)
    app.loader.import_default_modules()
    return installation


_synced: set[int] = set()


def _store(installation: Installation) -> Store:
    """The store, with rows for the triggers this process defines (never pruning others)."""
    store = installation.store
    if id(installation) not in _synced:
        store.sync_triggers([d.spec() for d in triggers], time.time(), prune=False)
        _synced.add(id(installation))
    return store


def _store_call(installation: Installation, what: str, call: Callable[[Store], Any]) -> Any:
    """``call(store)``; every failure, opening the store included, becomes one line and its exit code."""
    try:
        return call(_store(installation))
    except UnknownTriggerError as exc:
        _exit(f"{exc} ('celery cloaca list' shows the triggers there are)", EX_USAGE)
    except ConfigurationError as exc:
        _exit(str(exc), EX_CONFIG)
    except (ValueError, TypeError) as exc:
        _exit(str(exc), EX_USAGE)
    except CloacaError as exc:
        _exit(str(exc), EX_FAILURE)
    except Exception as exc:  # noqa: BLE001 - any store failure becomes one line
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _exit(f"{what}: the store could not be reached: {type(exc).__name__}: {first_line}",
              EX_UNAVAILABLE)


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _yes(value: object) -> str:
    return "yes" if value else "no"


def _pause(schedule: dict[str, Any]) -> str:
    """A disabled trigger's pause in one line: ``by alice at 2026-12-01 18:40:02: why`` (``-`` if none)."""
    if schedule["enabled"] or schedule.get("paused_at") is None:
        return "-"
    by = f"by {schedule['paused_by']} " if schedule.get("paused_by") else ""
    note = f": {schedule['pause_note']}" if schedule.get("pause_note") else ""
    return f"{by}at {_when(schedule['paused_at'])}{note}"


# -- commands ----------------------------------------------------------------------


@click.group(name="cloaca", cls=CloacaGroup)
@click.pass_context
@handle_preload_options
def cloaca(ctx: click.Context, **_: Any) -> None:
    """Event-driven workflow triggers (cloaca-celery)."""


@cloaca.command(name="list")
@_option("--errors", "show_errors", is_flag=True, help_group="Output Options",
         help="Add a column with each trigger's last error.")
@_json_flag("every trigger's schedule")
@click.pass_context
def list_triggers(ctx: click.Context, show_errors: bool, as_json: bool) -> None:
    """Every trigger: workflow, interval, enabled, last poll and fire, errors."""
    inst = _installation(ctx)
    schedules: list[dict[str, Any]] = _store_call(inst, "list", lambda s: s.list_schedules())
    if as_json:
        _echo_json(ctx, schedules)
        return
    headers = ["name", "workflow", "interval", "enabled", "last poll", "last fire", "errors", "paused"]
    if show_errors:
        headers.append("last error")
    rows = []
    for s in schedules:
        row = [s["trigger_name"], s["workflow"], format_duration(s["poll_interval"]), _yes(s["enabled"]),
               _when(s["last_poll_at"]), _when(s["last_fire_at"]),
               str(s["consecutive_errors"]) + ("" if s["registered"] else " (not in code)"),
               clip(printable(_pause(s)), 80)]
        if show_errors:
            row.append(clip(printable(s["last_error"] or "-"), 70) if s["consecutive_errors"] else "-")
        rows.append(row)
    ctx.obj.echo(table(headers, rows))


@cloaca.command()
@click.argument("name")
@_json_flag("the schedule")
@click.pass_context
def show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Trigger NAME: its whole schedule, state and last error."""
    inst = _installation(ctx)
    s: dict[str, Any] = _store_call(inst, "show", lambda store: store.get_schedule(name))
    if as_json:
        _echo_json(ctx, s)
        return
    health = assess_schedule(s)
    errors = int(s["consecutive_errors"])
    lines = [
        ("trigger", s["trigger_name"]),
        ("workflow", s["workflow"]),
        ("poll interval", format_duration(s["poll_interval"])),
        ("enabled", _yes(s["enabled"])),
        *([] if s["enabled"] else [
            ("paused at", _when(s["paused_at"])),
            ("paused by", s["paused_by"] or "-"),
            ("pause note", " ".join(str(s["pause_note"] or "-").split())),
        ]),
        ("in code", _yes(s["registered"]) + ("" if s["registered"] else
                                              " (no worker defines it any more: not polled)")),
        ("overlap", str(s["overlap"])),
        ("next poll", _when(s["next_poll_at"])),
        ("last poll", _when(s["last_poll_at"])),
        ("last fire", _when(s["last_fire_at"])),
        ("held back", str(s["dedup_count"])),
        ("errors in a row", str(errors) + (f" ({health.status})" if errors else "")),
        ("last error at", _when(s["last_error_at"])),
        ("state", json.dumps(s["state"], sort_keys=True, ensure_ascii=False)),
        ("created", _when(s["created_at"])),
        ("updated", _when(s["updated_at"])),
    ]
    width = max(len(label) for label, _ in lines) + 2
    for label, value in lines:
        ctx.obj.echo(f"{label:<{width}}{printable(value)}")
    error = s["last_error"]
    ctx.obj.echo(f"{'last error':<{width}}" + ("-" if not error else ""))
    if error:
        for line in str(error).splitlines():
            ctx.obj.echo("  " + printable(line))


@cloaca.command()
@click.argument("name")
@click.pass_context
def enable(ctx: click.Context, name: str) -> None:
    """Switch trigger NAME on (from its next poll, no restart); its pause note is cleared."""
    inst = _installation(ctx)
    _store_call(inst, "enable", lambda s: s.set_enabled(name, True))
    ctx.obj.echo(f"{printable(name)}: enabled")


def _os_user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name to be had (no passwd entry, no LOGNAME): nobody named
        return None


@cloaca.command()
@click.argument("name")
@_option("--note", default=None, help_group="Pause Options",
         help="Why it is paused; shown by list, show and the admin.")
@_option("--by", "by", default=None, help_group="Pause Options",
         help="Who pauses it [default: the OS user running this command].")
@click.pass_context
def disable(ctx: click.Context, name: str, note: str | None, by: str | None) -> None:
    """Switch trigger NAME off (from its next poll, no restart), recording who, when and why."""
    inst = _installation(ctx)
    who = by if by is not None else _os_user()
    _store_call(inst, "disable", lambda s: s.set_enabled(name, False, note=note, by=who))
    ctx.obj.echo(f"{printable(name)}: disabled" + (f" by {printable(who)}" if who else ""))


@cloaca.command()
@click.argument("name")
@_option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
         help_group="Filter Options", help="Show at most this many executions.")
@_option("--status", type=click.Choice(STATUSES), help_group="Filter Options",
         help="Only executions with this status.")
@_json_flag("the executions")
@click.pass_context
def history(ctx: click.Context, name: str, limit: int, status: str | None, as_json: bool) -> None:
    """Executions of trigger NAME, newest first."""
    inst = _installation(ctx)
    _store_call(inst, "history", lambda s: s.get_schedule(name))
    found: list[dict[str, Any]] = _store_call(
        inst, "history", lambda s: s.execution_history(name, limit=limit, status=status)
    )
    if as_json:
        _echo_json(ctx, found)
        return
    rows = []
    for e in found:
        took = "-"
        if e["completed_at"] is not None:
            took = f"{(e['completed_at'] - e['started_at']).total_seconds():.2f}s"
        error = printable(str(e["error"]).splitlines()[0]) if e["error"] else ""
        context = json.dumps(e["context"], sort_keys=True, ensure_ascii=False)
        rows.append([e["execution_id"], e["status"], _when(e["started_at"]), _when(e["completed_at"]), took,
                     clip(printable(context), 50), clip(error, 60)])
    ctx.obj.echo(table(["execution", "status", "started", "completed", "took", "context", "error"], rows))


@cloaca.command()
@click.argument("name")
@_option("--fire", is_flag=True, help_group="Poll Options",
         help="Poll through cloaca.poll on a worker (may really fire).")
@_option("--worker", "on_worker", is_flag=True, help_group="Poll Options",
         help="Evaluate on a worker through cloaca.preview (fires nothing; needs a result backend).")
@_option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
         help_group="Poll Options", help="Seconds to wait for the worker with --fire or --worker.")
@_json_flag("the outcome")
@click.pass_context
def poll(ctx: click.Context, name: str, fire: bool, on_worker: bool, timeout: float, as_json: bool) -> None:
    """Evaluate trigger NAME once and print what it returns (nothing is enqueued, nothing written).

    Here by default; with --worker on a worker (the admin's "Preview"). With
    --fire, send the cloaca.poll task that beat's dispatcher sends and print
    its outcome: the same lease, dedup claim and history as a scheduled poll.
    """
    inst = _installation(ctx)
    if fire and on_worker:
        raise UsageError("give --fire (a real poll) or --worker (a preview on a worker), not both", ctx)
    try:
        definition = triggers.get(name)
    except UnknownTriggerError as exc:
        _exit(str(exc), EX_USAGE)
    if fire:
        report = _from_worker(inst, name, timeout, lambda: send_manual_poll(inst.app, name, wait=True))
        _echo_json(ctx, report)
        return
    if on_worker:
        preview = Preview.from_dict(_from_worker(inst, name, timeout, lambda: send_preview(inst.app, name)))
    else:
        preview = preview_trigger(name, _store_for_preview(inst, definition.takes_state))
    _print_preview(ctx, preview, as_json)


def _store_for_preview(inst: Installation, needed: bool) -> Store | None:
    """The store as it is (no sync: a preview writes nothing); ``None`` if a trigger without state
    cannot reach it. A trigger with state needs it: an unreachable store is then one line and 69."""
    try:
        return inst.store
    except Exception as exc:  # noqa: BLE001 - one line, or no store at all
        if not needed:
            return None
        code = EX_CONFIG if isinstance(exc, ConfigurationError) else EX_UNAVAILABLE
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _exit(f"poll: the store could not be reached: {type(exc).__name__}: {first_line}", code)


def _from_worker(inst: Installation, name: str, timeout: float, send: Callable[[], Any]) -> Any:
    """Send a task (``send()``) and wait for its result; a failure is one line and EX_UNAVAILABLE."""
    try:
        result = send()
    except Exception as exc:  # noqa: BLE001 - the broker's refusal, in one line
        _exit(f"{name}: the task could not be sent: the broker could not be reached: {exc}", EX_UNAVAILABLE)
    try:
        return result.get(timeout=timeout, propagate=True)
    except Exception as exc:  # noqa: BLE001 - a timeout, no result backend, or a worker error, in one line
        _exit(f"{name}: no outcome from a worker within {timeout:g}s (is a worker running and "
              f"consuming the poll queue, and does the app have a result backend?): "
              f"{type(exc).__name__}: {exc}", EX_UNAVAILABLE)


def _print_preview(ctx: click.Context, preview: Preview, as_json: bool) -> None:
    name = preview.trigger_name
    if as_json:
        _echo_json(ctx, preview.as_dict())
    elif preview.result == "error":
        _exit(f"{name}: {preview.error}", EX_FAILURE)
    elif preview.result == "skip":
        ctx.obj.echo(f"{printable(name)}: skip ({preview.took_ms:.1f} ms)")
    else:
        shown = printable(json.dumps(preview.context or {}, sort_keys=True, ensure_ascii=False))
        ctx.obj.echo(f"{printable(name)}: fire {shown} ({preview.took_ms:.1f} ms; nothing enqueued, "
                     "use --fire)")
        if preview.held_by:
            ctx.obj.echo(f"  {printable(preview.reason or '')}")
    if preview.result == "error":
        raise click.exceptions.Exit(EX_FAILURE)


@cloaca.command()
@_json_flag("the findings")
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Check triggers, workflows, serializers, the store and beat's entries.

    Exits 1 when there is a problem: no trigger found, a trigger naming an
    unknown workflow, a serializer other than JSON, a missing beat entry, an
    unhealthy trigger (its last 3 polls failed, or it was not polled for 3
    intervals), each named; 69 when the store cannot be reached. Fit for a
    cron job or a Kubernetes liveness probe.
    """
    inst = _installation(ctx)
    setup_problems = inst.check()
    problems: list[dict[str, Any]] = [{"trigger": None, "message": p} for p in setup_problems]
    warnings: list[dict[str, Any]] = []
    passed: list[str] = []
    code = EX_OK
    if not len(triggers):
        problems.append({"trigger": None, "message": f"no triggers found. {HOW_TRIGGERS_ARE_FOUND}"})
    store_url = "-"
    try:
        settings = inst.settings
        store = _store(inst)
        store_url = store.url
        schedules = store.list_schedules()
        now = datetime.fromtimestamp(store.now(), tz=timezone.utc)
        slack = slack_of(settings.health_flush_interval)
        last_polls = store.last_polls(counted_since(schedules, now, slack))
    except Exception as exc:  # noqa: BLE001 - reported as a problem, not a traceback
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        problems.append({"trigger": None,
                         "message": f"the store could not be reached: {type(exc).__name__}: {first_line}"})
        code = EX_UNAVAILABLE if not isinstance(exc, ConfigurationError) else EX_CONFIG
        schedules = []
        settings = None
        last_polls, now, slack = {}, datetime.now(timezone.utc), slack_of(5.0)
    else:
        passed.append(f"store reachable ({store_url})")
    beat = inst.app.conf.beat_schedule or {}
    for entry in (DISPATCH_TASK, SWEEP_TASK):
        if entry not in beat:
            problems.append({"trigger": None, "message": f"beat entry {entry!r} missing: is "
                             "install(app) called in the module that -A names?"})
    defined = set(triggers.names())
    mine = [schedule for schedule in schedules if schedule["trigger_name"] in defined]
    for health in assess_all(mine, last_polls, now, slack):
        finding = {"trigger": health.trigger_name, "message": health.reason}
        if health.status == "unhealthy":
            problems.append(finding)
        elif health.status == "warning":
            warnings.append(finding)
    if settings is not None and len(triggers):
        passed.append(f"{len(triggers)} trigger(s), {len(workflows)} workflow(s); dispatch every "
                      f"{inst.dispatch_interval():g}s")
    if not setup_problems:
        passed.append("serializers are JSON; every trigger's workflow is registered")
    if problems and code == EX_OK:
        code = EX_FAILURE
    if as_json:
        _echo_json(ctx, {"ok": not problems, "store": store_url, "triggers": len(triggers),
                         "workflows": len(workflows), "problems": problems,
                         "warnings": warnings, "unhealthy_after_errors": UNHEALTHY_AFTER_ERRORS,
                         "unhealthy_after_intervals": STALE_AFTER_INTERVALS})
    else:
        for line in passed:
            ctx.obj.echo(f"{ctx.obj.style('ok  ', fg='green')}  {printable(line)}")
        for finding in warnings:
            ctx.obj.echo(f"{ctx.obj.style('WARN', fg='yellow')}  trigger {finding['trigger']!r}: "
                         f"{printable(finding['message'])}")
        for finding in problems:
            who = f"trigger {finding['trigger']!r}: " if finding["trigger"] else ""
            fail = ctx.obj.style("FAIL", fg="red", bold=True)
            ctx.obj.echo(f"{fail}  {who}{printable(finding['message'])}")
    if code != EX_OK:
        raise click.exceptions.Exit(code)


@cloaca.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade cloaca's tables in the store."""
    inst = _installation(ctx)
    def upgrade(store: Store) -> str:
        store.ensure_schema()
        return store.url

    url = _store_call(inst, "migrate", upgrade)
    ctx.obj.echo(f"store up to date ({url})")


@cloaca.command()
@_option("--older-than", "older_than", required=True, help_group="Prune Options",
         help="Age of the executions to delete, e.g. 30d, 12h.")
@click.pass_context
def prune(ctx: click.Context, older_than: str) -> None:
    """Delete ended executions completed more than --older-than ago."""
    inst = _installation(ctx)
    try:
        seconds = parse_duration(older_than, "--older-than")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=seconds)
    count = _store_call(inst, "prune", lambda s: s.prune_executions(cutoff))
    rows = _store_call(inst, "prune", lambda s: s.prune_health(cutoff))
    ctx.obj.echo(f"deleted {count} execution(s) completed before {_when(cutoff)} UTC, "
                 f"and {rows} health row(s) of the minutes before")


# -- health: stats and metrics -----------------------------------------------------


def _since(value: str) -> float:
    try:
        return parse_duration(value, "--since")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def stats_json(since: datetime, now: datetime, names: list[str], rows: list[HealthCounts],
               minutes: bool) -> dict[str, Any]:
    """The shape of ``cloaca stats --json`` (docs/cli.md): each trigger's totals over the window,
    with its minutes when ``minutes``."""
    by_name: dict[str, list[HealthCounts]] = {name: [] for name in names}
    for row in rows:
        by_name.setdefault(row.trigger_name, []).append(row)
    found = []
    for name in sorted(by_name):
        entry = total(by_name[name], name, since).as_dict()
        del entry["minute"]
        if minutes:
            entry["minutes"] = [row.as_dict() for row in by_name[name]]
        found.append(entry)
    return {"since": since.isoformat(), "until": now.isoformat(), "triggers": found}


@cloaca.command()
@click.argument("name", required=False)
@_option("--since", "since", default="1h", show_default=True, help_group="Filter Options",
         help="How far back, e.g. 15m, 1h, 2d (whole minutes).")
@_json_flag("the counts")
@click.pass_context
def stats(ctx: click.Context, name: str | None, since: str, as_json: bool) -> None:
    """Health counts per trigger (or per minute of trigger NAME): polls, skips, fires, held back,
    errors, late polls, poll duration and fire -> first step latency, summed over every process."""
    inst = _installation(ctx)
    seconds = _since(since)
    if name is not None:
        _store_call(inst, "stats", lambda s: s.get_schedule(name))
    now = datetime.fromtimestamp(_store_call(inst, "stats", lambda s: s.now()), tz=timezone.utc)
    start = now - timedelta(seconds=seconds)
    rows: list[HealthCounts] = _store_call(inst, "stats", lambda s: s.health(name, start))
    names = [name] if name is not None else [
        s["trigger_name"] for s in _store_call(inst, "stats", lambda s: s.list_schedules()) if s["registered"]
    ]
    data = stats_json(start, now, names, rows, minutes=name is not None)
    if as_json:
        _echo_json(ctx, data)
        return
    headers = ["polls", "skips", "fires", "held", "pending", "cancelled", "dropped", "errors", "late",
               "poll p50", "poll max", "latency p50", "latency max"]

    def cells(entry: dict[str, Any]) -> list[str]:
        counts = [entry[key] for key in ("polls", "skips", "fires")] + [sum(entry["held"].values())]
        counts += [entry[key] for key in ("pending", "cancelled", "dropped", "errors", "late")]
        times = [entry[which][key] for which in ("poll_seconds", "latency_seconds") for key in ("p50", "max")]
        return [str(count) for count in counts] + [_seconds(value) for value in times]

    ctx.obj.echo(f"since {_when(start)} UTC ({format_duration(seconds)}); "
                 "p50 is approximate (a histogram's bucket), max is exact")
    if name is None:
        ctx.obj.echo(table(["trigger", *headers], [[e["trigger_name"], *cells(e)] for e in data["triggers"]]))
        return
    entry = data["triggers"][0]
    rows_shown = [[minute["minute"][11:16], *cells(minute)] for minute in entry["minutes"]]
    rows_shown.append(["total", *cells(entry)])
    ctx.obj.echo(table(["minute", *headers], rows_shown))


@cloaca.command()
@_option("--port", type=click.IntRange(min=0, max=65535), default=9808, show_default=True,
         help_group="Server Options", help="Port to serve /metrics on.")
@_option("--bind", default="127.0.0.1", show_default=True, help_group="Server Options",
         help="Address to listen on (0.0.0.0 for every interface).")
@click.pass_context
def metrics(ctx: click.Context, port: int, bind: str) -> None:
    """Serve the health counts to Prometheus on /metrics (needs cloaca-celery[prometheus]).

    Every scrape reads the counts from the store, so the numbers are those of
    every worker process on every host. Counters count from this server's start.
    """
    inst = _installation(ctx)
    try:
        from .metrics import serve
    except ImportError as exc:
        _exit(f"cloaca metrics needs prometheus_client: pip install 'cloaca-celery[prometheus]' ({exc})",
              EX_CONFIG)
    _store_call(inst, "metrics", lambda s: s.now())
    try:
        server = serve(inst.store, inst.settings, bind, port)
    except OSError as exc:
        _exit(f"metrics: cannot listen on {bind}:{port}: {exc}", EX_UNAVAILABLE)
    host, bound_port = str(server.server_address[0]), int(server.server_address[1])
    ctx.obj.echo(f"serving cloaca health metrics on http://{host}:{bound_port}/metrics "
                 f"(store {inst.store.url})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
