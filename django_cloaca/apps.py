"""Django app configuration for django_cloaca."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class CloacaConfig(AppConfig):
    name = "django_cloaca"
    label = "django_cloaca"
    verbose_name = _("Cloaca triggers")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the system checks (``manage.py check``; see :mod:`django_cloaca.checks`)."""
        from . import checks

        checks.register()
