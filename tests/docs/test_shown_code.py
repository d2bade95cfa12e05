"""Code shown but not run: other tools' code on docs/coming-from.md, in ```py blocks.

Every ```python block of the docs runs (tests/docs/test_pages.py). A page that shows
another tool's code (Dagster, Airflow, celery-once...), which cannot run here,
marks it ```py instead; such blocks are allowed on the pages named below only,
and must still be valid Python.
"""

from __future__ import annotations

import ast
import re

import pytest

from tests.docs.pages import PAGES, REPO

SHOWN_NOT_RUN = {"docs/coming-from.md"}
_SHOWN = re.compile(r"^```py\n(?P<code>.*?)^```$", re.S | re.M)


def test_only_the_coming_from_page_shows_code_it_does_not_run() -> None:
    with_shown = {p.relative_to(REPO).as_posix() for p in PAGES if _SHOWN.search(p.read_text())}
    assert with_shown <= SHOWN_NOT_RUN, f"```py blocks (not run) outside {SHOWN_NOT_RUN}: {with_shown}"


@pytest.mark.parametrize("page", sorted(SHOWN_NOT_RUN))
def test_shown_code_is_valid_python(page: str) -> None:
    text = (REPO / page).read_text()
    blocks = list(_SHOWN.finditer(text))
    assert blocks, f"{page} shows no other tool's code"
    for block in blocks:
        line = text.count("\n", 0, block.start()) + 1
        try:
            ast.parse(block.group("code"))
        except SyntaxError as exc:
            raise AssertionError(f"{page} line {line}: {exc}") from exc
