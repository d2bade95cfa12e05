"""Django settings of the smoke test's worker and beat: the test project's, on the test's database.

``SMOKE_DJANGO_DATABASE`` holds the test process's database settings as JSON
(the database pytest-django created), so the processes write the rows the
test's admin pages read.
"""

from __future__ import annotations

import json
import os

from tests.django_project.settings import *  # noqa: F403 - the same project, another database

DATABASES = {"default": json.loads(os.environ["SMOKE_DJANGO_DATABASE"])}
CLOACA_CELERY_APP = "tests.smoke.smoke_app.app"
