"""django_cloaca with a custom user model: the admin's tests under settings that swap the user model.

The user model is fixed when Django starts, so they run in a pytest of their own
(``custom_user_checks.py`` under ``tests.django_project.settings_custom_user``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a Django test run of its own, in a subprocess
def test_the_admin_with_a_custom_user_model(tmp_path: Path) -> None:
    skip = ("DJANGO_SETTINGS_MODULE", "CLOACA_TEST_DJANGO_DIR")
    env = {k: v for k, v in os.environ.items() if k not in skip}
    env["PYTHONPATH"] = str(REPO)
    if env.get("CLOACA_TEST_DJANGO_DB") == "postgresql":
        env["CLOACA_TEST_PG_NAME"] = "test_custom_user"  # beside the outer run's test_test
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--ds", "tests.django_project.settings_custom_user", "tests/djangoapp/custom_user_checks.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout, done.stdout[-2000:]
