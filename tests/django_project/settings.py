"""Django settings for django_cloaca's tests.

``CLOACA_TEST_DJANGO_DB=postgresql`` runs them on PostgreSQL (database
``test``; pytest-django creates ``test_test``), otherwise SQLite files in a
temporary folder.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import django

SECRET_KEY = "django-cloaca-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.django_project.urls"
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
        "DIRS": [],
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

_DB_DIR = os.environ.get("CLOACA_TEST_DJANGO_DIR") or tempfile.mkdtemp(prefix="cloaca-django-")
if "CLOACA_TEST_DJANGO_DIR" not in os.environ:
    atexit.register(shutil.rmtree, _DB_DIR, True)

if os.environ.get("CLOACA_TEST_DJANGO_DB") == "postgresql":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("CLOACA_TEST_PG_NAME", "test"),
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": "5432",
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(_DB_DIR, "db.sqlite3"),
            "TEST": {"NAME": os.path.join(_DB_DIR, "test.sqlite3")},
            # As docs/django.md says (system check django_cloaca.W001); Django 4.2 has no such option.
            "OPTIONS": {"timeout": 30,
                        **({"transaction_mode": "IMMEDIATE"} if django.VERSION >= (5, 1) else {})},
        }
    }

CLOACA_CELERY_APP = "tests.django_project.celery_app.app"
CELERY_BROKER_URL = "memory://"
CELERY_TASK_ALWAYS_EAGER = True
