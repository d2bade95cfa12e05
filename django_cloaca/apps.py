"""Django app configuration for django_cloaca."""

from __future__ import annotations

from django.apps import AppConfig


class CloacaConfig(AppConfig):
    name = "django_cloaca"
    label = "django_cloaca"
    verbose_name = "Cloaca triggers"
    default_auto_field = "django.db.models.BigAutoField"
