"""Settings of the example shop.

With no ``CELERY_BROKER_URL`` the demo runs on cloaca's embedded default:
broker and results under ``SHOP_HOME/.cloaca``, the Django database in
``SHOP_HOME/db.sqlite3``. Set ``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND``
(Redis or RabbitMQ) and a PostgreSQL ``DATABASES`` for production.
"""

from __future__ import annotations

import os
from pathlib import Path

import django

BASE_DIR = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("SHOP_HOME", BASE_DIR))

SECRET_KEY = os.environ.get("SHOP_SECRET_KEY", "example-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "shop.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "/static/"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_cloaca",
    "orders",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

_sqlite_options: dict[str, object] = {"timeout": 30}
if django.VERSION >= (5, 1):
    # Several worker processes write at once: take the write lock up front.
    _sqlite_options["transaction_mode"] = "IMMEDIATE"
    _sqlite_options["init_command"] = "PRAGMA journal_mode=WAL;"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": HOME / "db.sqlite3",
        "OPTIONS": _sqlite_options,
    }
}

CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_CLOACA_HOME = str(HOME / ".cloaca")
CLOACA_CELERY_APP = "shop.celery.app"

SHOP_INBOX = HOME / "inbox"
SHOP_ARCHIVE = HOME / "archive"
