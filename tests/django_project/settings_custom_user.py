"""The test project with a custom user model (``AUTH_USER_MODEL = "accounts.Operator"``).

Used by ``tests/djangoapp/test_custom_user.py``, which runs
``tests/djangoapp/custom_user_checks.py`` under these settings in a pytest of its own
(the user model is fixed when Django starts).
"""

from __future__ import annotations

from .settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.django_project.accounts"]  # noqa: F405
AUTH_USER_MODEL = "accounts.Operator"
