"""Fixtures of every suite: registries of its own for every test, a PostgreSQL schema on request.

Helpers that are not fixtures live in ``tests/support/`` (finding the services,
migrated SQLite files) and in each suite's own helper module
(``tests/e2e/harness.py``, ``tests/faults/helpers.py``, ``tests/docs/pages.py``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import settings

import tests.django_project.celery_app  # noqa: F401 - its triggers exist in every test, as in a project
from tests.support.services import postgres_schema

# Nothing under .hypothesis/: `make test` leaves the working tree as it found it.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "cloaca-hyp"))
settings.register_profile("cloaca", database=None)
settings.load_profile("cloaca")


@pytest.fixture(autouse=True)
def keep_current_celery_app() -> Iterator[None]:
    """A test that creates a Celery app must not leave it as everyone's current app."""
    from celery import _state

    current = _state.get_current_app()
    default = _state.default_app
    yield
    _state.default_app = default
    _state._set_current_app(current)


@pytest.fixture(autouse=True)
def clean_registries(cloaca_registries: None) -> None:
    """Each test starts with the registries it found and leaves them so (the cloaca_celery.testing
    plugin's fixture, as docs/testing.md shows a project's suite using it)."""


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A PostgreSQL schema of the test's own, dropped afterwards (no PostgreSQL: skip, or fail in CI)."""
    with postgres_schema() as schema:
        yield schema
