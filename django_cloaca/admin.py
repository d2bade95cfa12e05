"""Admin pages: triggers (switch on/off, poll now) and their read-only execution history.

Enable, disable and "poll now" are admin actions (POST with CSRF, change
permission required). Enabling and disabling write the schedule row, which
the next poll reads: no restart of beat or workers. "Poll now" sends the
same ``cloaca.poll`` task that beat's dispatcher sends, so it takes the same
lease and the same deduplication claim.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from cloaca_celery.builtin_tasks import DISPATCH_TASK, send_manual_poll
from cloaca_celery.durations import format_duration

from .health_admin import HealthAdminMixin
from .models import TriggerExecution, TriggerSchedule
from .store import DjangoStore


def _celery_app() -> Any:
    """``settings.CLOACA_CELERY_APP`` (a dotted path) or Celery's current app."""
    from celery import current_app
    from django.conf import settings
    from django.utils.module_loading import import_string

    path = getattr(settings, "CLOACA_CELERY_APP", None)
    if path:
        return import_string(path)
    return current_app._get_current_object()


def _pretty_json(value: Any) -> str:
    return format_html("<pre class='cloaca-json'>{}</pre>",
                       json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


@admin.register(TriggerSchedule)
class TriggerScheduleAdmin(HealthAdminMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = (
        "trigger_name", "workflow", "interval", "enabled", "last_poll_at", "last_fire_at",
        "errors", "short_error", "health_status", "history",
    )
    list_display_links = ("trigger_name",)
    list_editable = ("enabled",)
    list_filter = ("enabled", "registered", "allow_concurrent", "workflow")
    search_fields = ("trigger_name", "workflow", "last_error")
    ordering = ("trigger_name",)
    actions = ("enable_triggers", "disable_triggers", "poll_now")
    readonly_fields = (
        "trigger_name", "workflow", "interval", "allow_concurrent", "registered", "next_poll",
        "last_poll_at", "last_fire_at", "consecutive_errors", "last_error", "last_error_at",
        "dedup_count", "state_json", "created_at", "updated_at", "history", *HealthAdminMixin.health_fields,
    )
    fieldsets = (
        (None, {"fields": ("trigger_name", "workflow", "enabled", "history")}),
        ("Schedule", {"fields": ("interval", "allow_concurrent", "registered", "next_poll")}),
        ("Last activity", {"fields": (
            "last_poll_at", "last_fire_at", "consecutive_errors", "last_error", "last_error_at",
            "dedup_count",
        )}),
        ("State", {"classes": ("collapse",), "fields": ("state_json", "created_at", "updated_at")}),
        HealthAdminMixin.health_fieldset,
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="interval", ordering="poll_interval")
    def interval(self, obj: TriggerSchedule) -> str:
        return format_duration(obj.poll_interval)

    @admin.display(description="errors", ordering="consecutive_errors")
    def errors(self, obj: TriggerSchedule) -> int:
        return obj.consecutive_errors

    @admin.display(description="last error")
    def short_error(self, obj: TriggerSchedule) -> str:
        text = obj.last_error or ""
        return text if len(text) <= 60 else text[:57] + "..."

    @admin.display(description="state")
    def state_json(self, obj: TriggerSchedule) -> str:
        return _pretty_json(obj.state)

    @admin.display(description="history")
    def history(self, obj: TriggerSchedule) -> str:
        url = reverse("admin:django_cloaca_triggerexecution_changelist")
        return format_html("<a href='{}?{}'>executions</a>", url,
                           urlencode({"trigger_name__exact": obj.trigger_name}))

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        if request.method == "GET":
            self._warn_if_not_installed(request)
        return super().changelist_view(request, extra_context)

    def _warn_if_not_installed(self, request: HttpRequest) -> None:
        try:
            schedule = _celery_app().conf.beat_schedule or {}
        except Exception:  # noqa: BLE001 - no Celery app is itself the thing to warn about
            schedule = {}
        if DISPATCH_TASK not in schedule:
            self.message_user(
                request,
                "The Celery app of this project has no 'cloaca.dispatch' beat entry: call "
                "cloaca_celery.install(app) in your Celery module, or triggers are not polled.",
                messages.WARNING,
            )

    @admin.action(description="Enable selected triggers", permissions=["change"])
    def enable_triggers(self, request: HttpRequest, queryset: QuerySet[TriggerSchedule]) -> None:
        self._switch(request, queryset, True)

    @admin.action(description="Disable selected triggers", permissions=["change"])
    def disable_triggers(self, request: HttpRequest, queryset: QuerySet[TriggerSchedule]) -> None:
        self._switch(request, queryset, False)

    def save_model(self, request: HttpRequest, obj: TriggerSchedule, form: Any, change: bool) -> None:
        """Write ``enabled`` alone: a full save would overwrite what polls wrote meanwhile."""
        DjangoStore(using=obj._state.db).set_enabled(obj.trigger_name, bool(obj.enabled))

    def _switch(self, request: HttpRequest, queryset: QuerySet[TriggerSchedule], enabled: bool) -> None:
        store = DjangoStore(using=queryset.db)
        names = list(queryset.values_list("trigger_name", flat=True))
        self._warn_missing(request, names)
        for name in names:
            store.set_enabled(name, enabled)
        count = len(names)
        word = "enabled" if enabled else "disabled"
        if count:
            self.message_user(request, f"{count} trigger(s) {word}; this takes effect at their next poll.",
                              messages.SUCCESS)

    def _warn_missing(self, request: HttpRequest, found: list[str]) -> None:
        """Name the selected triggers that have no row (deleted meanwhile, or a forged POST)."""
        known = set(found)
        missing = [n for n in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME) if n not in known]
        if missing:
            self.message_user(
                request,
                f"No such trigger: {', '.join(repr(n) for n in missing)} (no schedule row); nothing "
                "was done for it. Reload the list to see the triggers there are.",
                messages.ERROR,
            )

    @admin.action(description="Poll selected triggers now", permissions=["change"])
    def poll_now(self, request: HttpRequest, queryset: QuerySet[TriggerSchedule]) -> None:
        rows = list(queryset.values_list("trigger_name", "registered", "enabled"))
        self._warn_missing(request, [name for name, _, _ in rows])
        retired = [name for name, registered, _ in rows if not registered]
        if retired:
            self.message_user(
                request,
                f"Not polled: {', '.join(repr(n) for n in retired)} (registered = False): no worker "
                "defines it any more, so no poll was sent. Deploy the code that defines it first.",
                messages.ERROR,
            )
        disabled = [name for name, registered, enabled in rows if registered and not enabled]
        if disabled:
            self.message_user(
                request,
                f"Not polled: {', '.join(repr(n) for n in disabled)} is disabled, and a disabled "
                "trigger is never polled, not even by \"poll now\". Enable it first.",
                messages.WARNING,
            )
        app = _celery_app()
        sent: list[str] = []
        for name in [name for name, registered, enabled in rows if registered and enabled]:
            try:
                send_manual_poll(app, name, wait=False)
            except Exception as exc:  # noqa: BLE001 - shown to the operator, who can retry
                self.message_user(request, f"{name}: the poll could not be sent: {exc}", messages.ERROR)
                continue
            sent.append(name)
        if sent:
            self.message_user(
                request,
                f"Poll sent for {', '.join(sent)}; a worker runs it like any scheduled poll, and "
                "its outcome shows in the list and the history once it has run.",
                messages.SUCCESS,
            )


class ScheduledChoicesFilter(admin.SimpleListFilter):
    """A filter of the executions list whose choices come from the schedules table.

    Django's own ``list_filter`` on a field runs ``SELECT DISTINCT`` over the
    whole executions table on every page view; the schedules table has one
    row per trigger. The parameter is the one a field filter would use, so
    links such as a trigger's "executions" keep working.
    """

    field: str

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        values = TriggerSchedule.objects.order_by(self.field).values_list(self.field, flat=True).distinct()
        return [(value, value) for value in values]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset if value is None else queryset.filter(**{self.field: value})


class TriggerFilter(ScheduledChoicesFilter):
    title = "trigger"
    parameter_name = "trigger_name__exact"
    field = "trigger_name"


class WorkflowFilter(ScheduledChoicesFilter):
    title = "workflow"
    parameter_name = "workflow__exact"
    field = "workflow"


@admin.register(TriggerExecution)
class TriggerExecutionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("short_id", "trigger_link", "workflow", "status", "started_at",
                    "completed_at", "duration_display")
    list_filter = ("status", TriggerFilter, WorkflowFilter)
    search_fields = ("execution_id", "trigger_name", "context_hash", "context", "error")
    date_hierarchy = "started_at"
    ordering = ("-started_at",)
    fieldsets = (
        (None, {"fields": ("execution_id", "trigger_link", "workflow", "status")}),
        ("Timing", {"fields": ("started_at", "running_at", "completed_at", "duration_display")}),
        ("Context", {"fields": ("context_json", "context_hash")}),
        ("Outcome", {"fields": ("error", "task_ids_json")}),
    )
    readonly_fields = (
        "execution_id", "trigger_link", "workflow", "status", "started_at", "running_at",
        "completed_at", "duration_display", "context_json", "context_hash", "error", "task_ids_json",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="execution", ordering="execution_id")
    def short_id(self, obj: TriggerExecution) -> str:
        return obj.execution_id[:8]

    @admin.display(description="trigger", ordering="trigger_name")
    def trigger_link(self, obj: TriggerExecution) -> str:
        url = reverse("admin:django_cloaca_triggerschedule_change", args=[obj.trigger_name])
        return format_html("<a href='{}'>{}</a>", url, obj.trigger_name)

    @admin.display(description="duration")
    def duration_display(self, obj: TriggerExecution) -> str:
        seconds = obj.duration
        return "-" if seconds is None else f"{seconds:.2f}s"

    @admin.display(description="context")
    def context_json(self, obj: TriggerExecution) -> str:
        return _pretty_json(obj.context)

    @admin.display(description="task ids")
    def task_ids_json(self, obj: TriggerExecution) -> str:
        return _pretty_json(obj.task_ids)
