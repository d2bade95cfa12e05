"""Finding the real services the tests talk to, and failing or skipping when one is missing.

With ``CLOACA_TEST_REQUIRE_SERVICES=1`` (what ``.ci/run`` sets) a missing
service fails the test; otherwise the test is skipped with the reason, so
``make test`` on a laptop without Redis says which tests it skipped and why.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

REDIS_HOST = os.environ.get("CLOACA_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("CLOACA_TEST_REDIS_PORT", "6379"))


def services_required() -> bool:
    return os.environ.get("CLOACA_TEST_REQUIRE_SERVICES", "") not in ("", "0", "false", "no")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need_service(name: str, host: str, port: int) -> None:
    """Fail (CI) or skip (laptop) the calling test if ``host:port`` does not answer."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if services_required():
        pytest.fail(f"{message} and CLOACA_TEST_REQUIRE_SERVICES=1 (start it; see .ci/run)")
    pytest.skip(f"{message}; start it to run this test")


def need_tool(what: str, present: bool, install: str) -> None:
    """Fail (CI) or skip (laptop) the calling test if a program or library it needs is missing."""
    if present:
        return
    message = f"{what} is missing ({install})"
    if services_required():
        pytest.fail(f"{message} and CLOACA_TEST_REQUIRE_SERVICES=1 (see .ci/run)")
    pytest.skip(message)


def need_redis() -> None:
    need_service("Redis", REDIS_HOST, REDIS_PORT)

POSTGRES_HOST = os.environ.get("CLOACA_TEST_POSTGRES_HOST", "127.0.0.1")
POSTGRES_PORT = int(os.environ.get("CLOACA_TEST_POSTGRES_PORT", "5432"))
POSTGRES_URL = os.environ.get(
    "CLOACA_TEST_POSTGRES_URL", f"postgresql+psycopg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/test"
)
MARIADB_HOST = os.environ.get("CLOACA_TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("CLOACA_TEST_MARIADB_PORT", "3306"))
MARIADB_URL = os.environ.get(
    "CLOACA_TEST_MARIADB_URL", f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/test"
)


def need_postgres() -> None:
    need_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)


def need_mariadb() -> None:
    need_service("MariaDB", MARIADB_HOST, MARIADB_PORT)


@contextmanager
def postgres_schema(prefix: str = "cloaca_t_") -> Iterator[str]:
    """A PostgreSQL schema of its own, ``<prefix><hex>``, dropped with everything in it on exit.

    Fails or skips the calling test (:func:`need_postgres`) when PostgreSQL does not answer.
    """
    need_postgres()
    from sqlalchemy import create_engine, text

    schema = f"{prefix}{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield schema
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def postgres_url_in(schema: str) -> str:
    """A store URL whose connections work in ``schema`` (``search_path``), as a process is given it."""
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
