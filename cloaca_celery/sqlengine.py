"""Engines for the SQL store: database URLs, connection pools, and SQLite tuned for many processes.

``create_store_engine`` turns a cloaca database URL (``sqlite://workflows.db``,
``postgresql://...``, ``mysql://...``) into an SQLAlchemy engine: SQLite in
WAL mode with a busy timeout and ``BEGIN IMMEDIATE`` transactions, so that
workers and beats writing one file wait for each other instead of failing;
small pools elsewhere. Engines hide statement parameters from their errors
(``hide_parameters``), so an error text kept as a poll's ``last_error`` or
logged never carries the values of a row. ``redact_url`` is the URL as
messages and logs show it.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from .errors import ConfigurationError


def normalize_database_url(url: str) -> str:
    """Accept cloaca-style URLs (``sqlite://workflows.db``, ``sqlite://:memory:``)
    and SQLAlchemy URLs; pick an installed driver for bare ``postgresql://`` and
    ``mysql://``."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"database URL {url!r} is not a URL; use e.g. 'sqlite://workflows.db', "
            "'sqlite:///abs/path.db' or 'postgresql://user@host/db'"
        )
    if url.startswith("sqlite://") and not url.startswith("sqlite:///"):
        rest = url[len("sqlite://"):]
        url = "sqlite://" if rest in ("", ":memory:") else f"sqlite:///{rest}"
    scheme, _, rest = url.partition("://")
    if scheme in ("postgres", "postgresql"):
        driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
        url = f"postgresql+{driver}://{rest}"
    elif (
        scheme in ("mysql", "mariadb")
        and importlib.util.find_spec("MySQLdb") is None
        and importlib.util.find_spec("pymysql")
    ):
        url = f"mysql+pymysql://{rest}"
    return url


def create_store_engine(url: str) -> Engine:
    """An engine for ``url`` tuned for many processes sharing the database."""
    normalized = normalize_database_url(url)
    try:
        parsed = make_url(normalized)
    except ArgumentError as exc:
        raise ConfigurationError(f"database URL {redact_url(url)!r} is malformed: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        memory = database in (None, "", ":memory:")
        if not memory and database is not None:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            normalized,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=StaticPool if memory else None,
            hide_parameters=True,
        )
        _tune_sqlite(engine, memory)
        return engine
    # No pre-ping: reads retry once on a dropped connection (SqlStore._read_one), and a
    # write on one fails like any store error and is retried by the next poll.
    return create_engine(normalized, pool_size=2, max_overflow=8, pool_recycle=3600, hide_parameters=True)


def _tune_sqlite(engine: Engine, memory: bool) -> None:
    """WAL, a busy timeout, and ``BEGIN IMMEDIATE`` so concurrent writers wait
    for each other instead of failing with "database is locked"."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        if not memory:
            _set_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A single read runs in autocommit (the driver's isolation_level is None): no write lock.
        if not connection.get_execution_options().get("cloaca_read"):
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def _set_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, waiting while another connection holds the file.

    Switching a fresh file to WAL takes an exclusive lock, and SQLite answers
    "database is locked" at once, without its busy timeout, when workers and
    beat open the file together. WAL stays set in the file: the first switch
    is the only one that can meet another.
    """
    deadline = time.monotonic() + 30.0
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


SECRET_PARAMETER_WORDS = ("password", "passwd", "secret", "token", "key")
"""A URL query parameter whose name contains one of these (any case) holds a secret."""

REDACTED = "***"


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_PARAMETER_WORDS)


def redact_url(url: str) -> str:
    """``url`` with its password, and the values of secret-looking query parameters
    (``?password=``, ``sslkey=``, ``token=`` ...), replaced by ``***`` (for messages and logs).

    A relative SQLite path is shown resolved: it names a file in the folder
    the process started in, and the full path says which one.
    """
    try:
        parsed = make_url(normalize_database_url(url))
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            parsed = parsed.set(database=str(Path(str(parsed.database)).expanduser().resolve()))
        shown = parsed.render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown without its credentials
        shown = url.split("@")[-1] if "@" in url else url
    return _redact_query(shown)


def _redact_query(url: str) -> str:
    """The secret-looking query parameters of ``url`` with their values replaced."""
    base, mark, query = url.partition("?")
    if not mark:
        return url
    parts = []
    for part in query.split("&"):
        name, equals, _value = part.partition("=")
        parts.append(f"{name}={REDACTED}" if equals and _is_secret(unquote_plus(name)) else part)
    return f"{base}?{'&'.join(parts)}"
