"""The health of triggers in the admin: the "health" column of the list and the charts of a trigger's page.

The list marks a trigger **unhealthy** by the rule of
``cloaca_celery.health`` (its last 3 polls failed, or it was not polled for 3
intervals), the one ``celery cloaca check`` applies; its last poll comes from
the health counts, read once for the page (:class:`_LastPolls`). A
trigger's page draws its counts of the last hour (a bar a minute) and the
last day (a bar per 20 minutes) as inline SVG: no script, no CDN.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from datetime import datetime, timedelta, timezone
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.db.models.functions import Now
from django.http import HttpRequest
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext_lazy as _

from cloaca_celery.binding import runtime_of
from cloaca_celery.counters import HealthCounts, total
from cloaca_celery.durations import parse_duration
from cloaca_celery.health import TriggerHealth, assess_schedule, counted_since, slack_of
from cloaca_celery.settings import DEFAULTS

from .models import TriggerSchedule
from .store import DjangoStore

SERIES = (
    ("skips", "#9aa5b1", _("skipped")),
    ("fires", "#2e7d32", _("fired")),
    ("held", "#ef8c00", _("held back")),
    ("errors", "#c62828", _("failed")),
    ("late", "#6a1b9a", _("dropped as late")),
)
"""What a bar stacks, bottom up: its count's name, colour and legend."""

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 150, 44, 22, 10


def _flush_interval(app: Any) -> float:
    runtime = runtime_of(app) if app is not None else None
    if runtime is not None:
        return runtime.settings.health_flush_interval
    return parse_duration(DEFAULTS["health_flush_interval"], "cloaca_health_flush_interval")


_FIELDS = (
    "trigger_name", "poll_interval", "enabled", "registered", "consecutive_errors", "last_error",
    "last_error_at", "last_poll_at", "created_at", "updated_at",
)


class _LastPolls:
    """The health counts' last polls, read once for a list page (:meth:`HealthAdminMixin.changelist_view`)."""

    def __init__(self) -> None:
        self.found: dict[str, datetime] | None = None

    def of(self, obj: TriggerSchedule, now: datetime, slack: float) -> datetime | None:
        if self.found is None:
            intervals = TriggerSchedule.objects.using(obj._state.db).values("poll_interval")
            since = counted_since(intervals, now, slack)
            self.found = DjangoStore(using=obj._state.db).last_polls(since)
        return self.found.get(obj.trigger_name)


_page: ContextVar[_LastPolls | None] = ContextVar("cloaca_admin_last_polls", default=None)


def schedule_health(obj: TriggerSchedule, app: Any = None) -> TriggerHealth:
    """The health of a schedule row (its ``cloaca_now`` annotated by :meth:`HealthAdminMixin.get_queryset`).

    The last polls of the health counts are read once for a list page, or for
    this row alone elsewhere (a trigger's page)."""
    row = {name: getattr(obj, name) for name in _FIELDS}
    now = (getattr(obj, "cloaca_now", None) or datetime.now(timezone.utc)).astimezone(timezone.utc)
    slack = slack_of(_flush_interval(app))
    page = _page.get()
    if page is not None:
        counted = page.of(obj, now, slack)
    else:
        since = counted_since([row], now, slack)
        counted = DjangoStore(using=obj._state.db).last_polls(since).get(obj.trigger_name)
    return assess_schedule(row, last_polled_at=counted, now=now, slack=slack)


def _value(row: HealthCounts, name: str) -> int:
    return sum(row.held.values()) if name == "held" else int(getattr(row, name))


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def chart_svg(rows: Sequence[HealthCounts], start: datetime, bins: int, bin_minutes: int,
              title: str) -> SafeString:
    """Stacked bars of ``rows`` (one trigger's minutes) in ``bins`` bins of ``bin_minutes`` from ``start``."""
    binned = [HealthCounts("", start + timedelta(minutes=i * bin_minutes)) for i in range(bins)]
    for row in rows:
        index = int((row.minute - start).total_seconds() // (60 * bin_minutes))
        if 0 <= index < bins:
            binned[index].add(row)
    heights = [sum(_value(b, name) for name, _, _ in SERIES) for b in binned]
    peak = max(heights) or 1
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    bar_w = plot_w / bins
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="cloaca-health-chart" width="{WIDTH}" '
        f'height="{HEIGHT + 22}" viewBox="0 0 {WIDTH} {HEIGHT + 22}" role="img" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 8}" y2="{TOP + plot_h}" stroke="#888"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end" font-size="10" fill="#555">{peak}</text>',
        f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end" font-size="10" fill="#555">0</text>',
    ]
    for i, counts in enumerate(binned):
        x = LEFT + i * bar_w
        y = TOP + plot_h
        detail = ", ".join(f"{_value(counts, name)} {label}" for name, _, label in SERIES)
        label = (f"{counts.minute:%H:%M} UTC: {counts.polls} {_('polls')} ({detail}); "
                 f"{_('poll')} p50 {_ms(counts.poll_seconds.p50)}, max "
                 f"{_ms(counts.poll_seconds.largest if counts.poll_seconds.count else None)}")
        parts.append(f'<g class="cloaca-bar" data-minute="{counts.minute.isoformat()}" '
                     f'data-polls="{counts.polls}"><title>{escape(label)}</title>')
        for name, colour, _label in SERIES:
            value = _value(counts, name)
            if not value:
                continue
            h = value / peak * plot_h
            y -= h
            parts.append(f'<rect x="{x + 0.5:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                         f'height="{h:.1f}" fill="{colour}" data-series="{name}"/>')
        parts.append("</g>")
    for i in (0, bins // 2, bins):
        at = start + timedelta(minutes=i * bin_minutes)
        anchor = "start" if i == 0 else "end" if i == bins else "middle"
        parts.append(f'<text x="{LEFT + i * bar_w:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}" '
                     f'font-size="10" fill="#555">{at:%H:%M}</text>')
    x = LEFT
    for _name, colour, label in SERIES:
        parts.append(f'<rect x="{x}" y="{HEIGHT + 6}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="{HEIGHT + 15}" font-size="11" fill="#333">'
                     f"{escape(label)}</text>")
        x += 24 + 7 * len(str(label))
    parts.append("</svg>")
    return mark_safe("".join(parts))


def _summary(rows: Sequence[HealthCounts], since: datetime) -> str:
    summed = total(rows, "", since)
    return (f"{summed.polls} {_('polls')}: {summed.skips} {_('skipped')}, {summed.fires} {_('fired')}, "
            f"{sum(summed.held.values())} {_('held back')}, {summed.errors} {_('failed')}, "
            f"{summed.late} {_('dropped as late')}; {_('poll')} p50 {_ms(summed.poll_seconds.p50)}, "
            f"{_('fire to first step')} p50 {_ms(summed.latency_seconds.p50)} "
            f"(max {_ms(summed.latency_seconds.largest if summed.latency_seconds.count else None)})")


class HealthAdminMixin:
    """The health column and charts of ``TriggerScheduleAdmin``."""

    health_fields = ("health_status", "health_charts")
    health_fieldset = (_("Health"), {"fields": health_fields})

    def get_queryset(self, request: HttpRequest) -> QuerySet[TriggerSchedule]:
        queryset: QuerySet[TriggerSchedule] = super().get_queryset(request)  # type: ignore[misc]
        return queryset.annotate(cloaca_now=Now())

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        """The list, rendered here so that its health column reads the last polls once for the page."""
        token = _page.set(_LastPolls())
        try:
            response = super().changelist_view(request, extra_context)  # type: ignore[misc]
            if hasattr(response, "render"):
                response.render()
            return response
        finally:
            _page.reset(token)

    @admin.display(description=_("health"))
    def health_status(self, obj: TriggerSchedule) -> str:
        health = schedule_health(obj, self._celery_app_or_none())
        colours = {"ok": "#2e7d32", "warning": "#ef8c00", "unhealthy": "#c62828"}
        words = {"ok": _("ok"), "warning": _("warning"), "unhealthy": _("unhealthy")}
        return format_html('<span class="cloaca-health cloaca-health-{}" title="{}" style="color:{};'
                           'font-weight:bold">{}</span>', health.status, health.reason,
                           colours[health.status], words[health.status])

    @admin.display(description=_("polls"))
    def health_charts(self, obj: TriggerSchedule) -> str:
        store = DjangoStore(using=obj._state.db)
        now = datetime.fromtimestamp(store.now(), tz=timezone.utc)
        hour = now.replace(second=0, microsecond=0) - timedelta(minutes=59)
        day_minute = (now.hour * 60 + now.minute) // 20 * 20
        day = now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(minutes=day_minute - 71 * 20)
        rows = store.health(obj.trigger_name, day)
        last_hour = [row for row in rows if row.minute >= hour]
        return format_html(
            '<div class="cloaca-health-charts"><p><strong>{}</strong> {}</p>{}<p><strong>{}</strong> {}</p>{}'
            "<p class='help'>{}</p></div>",
            _("Last hour"), _summary(last_hour, hour), chart_svg(last_hour, hour, 60, 1, str(_("Last hour"))),
            _("Last day"), _summary(rows, day), chart_svg(rows, day, 72, 20, str(_("Last day"))),
            _("Counted in each worker process and written every few seconds (setting "
              "cloaca_health_flush_interval); p50 is approximate, max is exact."),
        )

    @staticmethod
    def _celery_app_or_none() -> Any:
        from .operations import celery_app

        try:
            return celery_app()
        except Exception:  # noqa: BLE001 - the defaults then
            return None
