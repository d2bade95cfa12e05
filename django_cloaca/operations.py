"""What an operator does to a trigger in the admin: switch it (with a note), poll it now, preview it.

Each goes through one code path, and each is written to Django's change
history (``LogEntry``, the trigger's "History" page) with who did it:

* **Disable** asks for a note on an intermediate page (like Django's own
  delete confirmation) and records who (``request.user``), when (the
  database's clock) and why on the schedule row; **enable** clears them.
  The change page's ``enabled`` box and the list's toggle go through the
  same ``Store.set_enabled``.
* **Poll now** sends the ``cloaca.poll`` task that beat's dispatcher sends.
* **Preview** sends ``cloaca.preview``: a worker evaluates the trigger once
  and fires nothing; the page shows the fire and its context, the skip and
  its reason, or the error. It waits for the worker's answer, so the Celery
  app needs a result backend (``CLOACA_PREVIEW_TIMEOUT`` seconds, 10 by default).
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from cloaca_celery.builtin_tasks import send_manual_poll, send_preview
from cloaca_celery.preview import Preview
from cloaca_celery.store import PAUSE_NOTE_LIMIT

from .models import TriggerSchedule
from .store import DjangoStore

DEFAULT_PREVIEW_TIMEOUT = 10.0


def celery_app() -> Any:
    """``settings.CLOACA_CELERY_APP`` (a dotted path) or Celery's current app."""
    from celery import current_app
    from django.utils.module_loading import import_string

    dotted = getattr(settings, "CLOACA_CELERY_APP", None)
    if dotted:
        return import_string(dotted)
    return current_app._get_current_object()


def who(request: HttpRequest) -> str:
    """The name recorded as ``paused_by``: the user's ``USERNAME_FIELD`` (any user model)."""
    return str(request.user.get_username())


def switch_message(enabled: bool, note: str | None) -> str:
    """The change-history line of a switch."""
    if enabled:
        return gettext("Enabled (the pause note is cleared).")
    if note:
        return gettext("Disabled: %(note)s") % {"note": note}
    return gettext("Disabled (no note).")


def run_preview(name: str) -> Preview:
    """Ask a worker to evaluate ``name`` once (``cloaca.preview``) and wait for its answer.

    A preview that could not be sent or came back with no answer is an
    ``error`` preview whose text says what to check.
    """
    setting = getattr(settings, "CLOACA_PREVIEW_TIMEOUT", DEFAULT_PREVIEW_TIMEOUT)
    try:
        timeout = float(setting)
    except (TypeError, ValueError):
        timeout = 0.0
    if not timeout > 0 or isinstance(setting, bool):
        return Preview(name, "error", error=gettext(
            "the setting CLOACA_PREVIEW_TIMEOUT must be a positive number of seconds, not %(value)r: "
            "fix it in the Django settings") % {"value": setting})
    try:
        result = send_preview(celery_app(), name)
    except Exception as exc:  # noqa: BLE001 - shown to the operator, who can retry
        return Preview(name, "error", error=gettext("the preview could not be sent: %(error)s")
                       % {"error": f"{type(exc).__name__}: {exc}"})
    try:
        return Preview.from_dict(result.get(timeout=timeout, propagate=True))
    except Exception as exc:  # noqa: BLE001 - no worker, no result backend, or the task failed
        return Preview(name, "error", error=gettext(
            "no answer from a worker within %(timeout)gs (is a worker running and consuming the poll "
            "queue, and does the Celery app have a result backend?): %(error)s"
        ) % {"timeout": timeout, "error": f"{type(exc).__name__}: {exc}"})


def preview_outcome(preview: Preview) -> str:
    """What a preview found, in one line: "fire {...}; what a poll would do", "skip; why", "error; text"."""
    if preview.result == "fire":
        context = json.dumps(preview.context or {}, sort_keys=True, ensure_ascii=False)
        return gettext("fire %(context)s; %(reason)s") % {"context": context, "reason": preview.reason}
    if preview.result == "skip":
        return gettext("skip; %(reason)s") % {"reason": preview.reason}
    return gettext("error; %(error)s") % {"error": preview.error}


def preview_message(preview: Preview) -> str:
    """A preview's line in the trigger's change history."""
    return gettext("Preview: %(outcome)s") % {"outcome": preview_outcome(preview)}


class DisableForm(forms.Form):
    """The note asked for on the way to disabling triggers."""

    note = forms.CharField(
        label=_("Why are they paused?"), required=False, max_length=PAUSE_NOTE_LIMIT,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
        help_text=_("Shown with your name in the list, on each trigger's page and by "
                    "'celery cloaca list'. Enabling a trigger clears it."),
    )


class TriggerScheduleForm(forms.ModelForm):  # type: ignore[type-arg]
    """The change page's form: ``enabled``, and a note for when it is switched off."""

    note = forms.CharField(
        label=_("Pause note"), required=False, max_length=PAUSE_NOTE_LIMIT,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 80}),
        help_text=_("Why you disable it: recorded with your name when you uncheck 'enabled' and save."),
    )

    class Meta:
        model = TriggerSchedule
        fields = ("enabled",)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("enabled") and (data.get("note") or "").strip():
            raise forms.ValidationError(
                _("A note is recorded only when the trigger is disabled: uncheck 'enabled', or clear "
                  "the note.")
            )
        return data


class TriggerOperations(admin.ModelAdmin):  # type: ignore[type-arg]
    """The operator's actions on triggers, mixed into the triggers' ``ModelAdmin``."""

    form = TriggerScheduleForm
    change_form_template = "django_cloaca/trigger_change_form.html"

    # -- enable and disable -------------------------------------------------------

    @admin.action(description=_("Enable selected triggers"), permissions=["change"])
    def enable_triggers(self, request: HttpRequest, queryset: QuerySet[TriggerSchedule]) -> None:
        self._switch(request, queryset, True, None)

    @admin.action(description=_("Disable selected triggers (with a note)…"), permissions=["change"])
    def disable_triggers(
        self, request: HttpRequest, queryset: QuerySet[TriggerSchedule]
    ) -> TemplateResponse | None:
        """First an intermediate page asks why; its form posts the action again with ``post``."""
        if not queryset.exists():  # none of the selected has a row: nothing to ask about
            self._warn_missing(request, [])
            return None
        if request.POST.get("post"):
            form = DisableForm(request.POST)
            if form.is_valid():
                self._switch(request, queryset, False, form.cleaned_data["note"].strip() or None)
                return None
        else:
            form = DisableForm()
        self._warn_missing(request, list(queryset.values_list("trigger_name", flat=True)))
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Disable triggers"),
            "subtitle": None,
            "opts": self.model._meta,
            "queryset": queryset,
            "form": form,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "django_cloaca/disable_confirmation.html", context)

    def save_model(self, request: HttpRequest, obj: TriggerSchedule, form: Any, change: bool) -> None:
        """Write the switch alone (a full save would overwrite what polls wrote meanwhile), and only
        when it changed: saving a disabled trigger's page again keeps its pause as it was."""
        note = (form.cleaned_data.get("note") or "").strip() or None if "note" in form.fields else None
        if "enabled" not in form.changed_data and not (note and not obj.enabled):
            return
        store = DjangoStore(using=obj._state.db)
        if obj.enabled:
            store.set_enabled(obj.trigger_name, True)
        else:
            store.set_enabled(obj.trigger_name, False, note=note, by=who(request))

    def construct_change_message(
        self, request: HttpRequest, form: Any, formsets: Any, add: bool = False
    ) -> Any:
        """A switch from the change page or the list's toggle is logged as one: "Disabled: why"."""
        if "enabled" in getattr(form, "changed_data", ()) or (form.cleaned_data.get("note") or "").strip():
            enabled = bool(form.cleaned_data.get("enabled"))
            return switch_message(enabled, None if enabled else (form.cleaned_data.get("note") or "").strip())
        return super().construct_change_message(request, form, formsets, add)

    def _switch(
        self, request: HttpRequest, queryset: QuerySet[TriggerSchedule], enabled: bool, note: str | None
    ) -> None:
        store = DjangoStore(using=queryset.db)
        rows = list(queryset)
        self._warn_missing(request, [row.trigger_name for row in rows])
        for row in rows:
            if enabled:
                store.set_enabled(row.trigger_name, True)
            else:
                store.set_enabled(row.trigger_name, False, note=note, by=who(request))
            self.log_change(request, row, switch_message(enabled, note))
        if rows:
            text = (gettext("%(count)d trigger(s) enabled; this takes effect at their next poll.") if enabled
                    else gettext("%(count)d trigger(s) disabled; this takes effect at their next poll."))
            self.message_user(request, text % {"count": len(rows)}, messages.SUCCESS)

    def _warn_missing(self, request: HttpRequest, found: list[str]) -> None:
        """Name the selected triggers that have no row (deleted meanwhile, or a forged POST)."""
        known = set(found)
        missing = [n for n in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME) if n not in known]
        if missing:
            self.message_user(
                request,
                gettext("No such trigger: %(names)s (no schedule row); nothing was done for it. Reload "
                        "the list to see the triggers there are.") % {"names": ", ".join(map(repr, missing))},
                messages.ERROR,
            )

    # -- poll now ---------------------------------------------------------------------

    @admin.action(description=_("Poll selected triggers now"), permissions=["change"])
    def poll_now(self, request: HttpRequest, queryset: QuerySet[TriggerSchedule]) -> None:
        rows = list(queryset)
        self._warn_missing(request, [row.trigger_name for row in rows])
        retired = [row.trigger_name for row in rows if not row.registered]
        if retired:
            self.message_user(request, gettext(
                "Not polled: %(names)s (registered = False): no worker defines it any more, so no poll "
                "was sent. Deploy the code that defines it first."
            ) % {"names": ", ".join(map(repr, retired))}, messages.ERROR)
        disabled = [row.trigger_name for row in rows if row.registered and not row.enabled]
        if disabled:
            self.message_user(request, gettext(
                "Not polled: %(names)s is disabled, and a disabled trigger is never polled, not even by "
                "\"poll now\". Enable it first.") % {"names": ", ".join(map(repr, disabled))},
                messages.WARNING)
        app = celery_app()
        sent: list[str] = []
        for row in [row for row in rows if row.registered and row.enabled]:
            try:
                send_manual_poll(app, row.trigger_name, wait=False)
            except Exception as exc:  # noqa: BLE001 - shown to the operator, who can retry
                self.message_user(request, gettext("%(name)s: the poll could not be sent: %(error)s")
                                  % {"name": row.trigger_name, "error": exc}, messages.ERROR)
                continue
            self.log_change(request, row, gettext("Polled now (a cloaca.poll task was sent)."))
            sent.append(row.trigger_name)
        if sent:
            self.message_user(request, gettext(
                "Poll sent for %(names)s; a worker runs it like any scheduled poll, and its outcome shows "
                "in the list and the history once it has run.") % {"names": ", ".join(sent)},
                messages.SUCCESS)

    # -- preview ------------------------------------------------------------------------

    @admin.action(description=_("Preview selected triggers (evaluate on a worker, fire nothing)"),
                  permissions=["change"])
    def preview_triggers(self, request: HttpRequest, queryset: QuerySet[TriggerSchedule]) -> None:
        rows = list(queryset)
        self._warn_missing(request, [row.trigger_name for row in rows])
        for row in rows:
            preview = run_preview(row.trigger_name)
            self.log_change(request, row, preview_message(preview))
            level = messages.ERROR if preview.result == "error" else messages.INFO
            self.message_user(request, gettext("Preview of %(name)s: %(outcome)s")
                              % {"name": row.trigger_name, "outcome": preview_outcome(preview)}, level)

    def get_urls(self) -> list[Any]:
        info = self.model._meta.app_label, self.model._meta.model_name
        preview = path("<path:object_id>/preview/", self.admin_site.admin_view(self.preview_view),
                       name="{}_{}_preview".format(*info))
        return [preview, *super().get_urls()]

    def preview_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """A trigger's preview page: GET shows the button, POST evaluates on a worker and shows the answer."""
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        queryset = TriggerSchedule.objects.using(self.get_queryset(request).db)
        obj = get_object_or_404(queryset, pk=unquote(object_id))
        if not self.has_change_permission(request, obj):
            raise PermissionDenied
        preview: Preview | None = None
        if request.method == "POST":
            preview = run_preview(obj.trigger_name)
            self.log_change(request, obj, preview_message(preview))
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Preview %(name)s") % {"name": obj.trigger_name},
            "subtitle": None,
            "opts": self.model._meta,
            "original": obj,
            "preview": preview,
            "context_json": None if preview is None or preview.context is None else json.dumps(
                preview.context, indent=2, sort_keys=True, ensure_ascii=False),
            "change_url": reverse("admin:django_cloaca_triggerschedule_change", args=[quote(obj.pk)]),
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "django_cloaca/preview.html", context)
