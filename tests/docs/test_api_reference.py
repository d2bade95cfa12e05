"""The API reference page (docs/api.md, rendered by mkdocstrings) covers the whole public API."""

from __future__ import annotations

import re

import cloaca_celery
from cloaca_celery import errors
from tests.docs.pages import REPO


def test_every_public_name_is_on_the_api_reference_page() -> None:
    page = (REPO / "docs" / "api.md").read_text()
    listed = set(re.findall(r"^\s+- (\w+)$", page, re.M))
    documented_modules = set(re.findall(r"^::: ([\w.]+)$", page, re.M))
    assert "cloaca_celery.errors" in documented_modules  # every error class, with its module
    missing = [
        name for name in cloaca_celery.__all__
        if name not in listed and not (hasattr(errors, name) and name.endswith("Error"))
    ]
    assert missing == [], f"docs/api.md does not list {missing}"
