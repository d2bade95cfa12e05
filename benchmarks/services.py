"""Redis and PostgreSQL for the benchmark: a private Redis database, private schemas, write counts.

The Redis database is reserved the way the end-to-end tests reserve theirs
(a ``cloaca-tests:db:<n>`` lock key in database 0), so a benchmark and a test
run on one machine never share one. Each measurement gets a PostgreSQL schema
of its own, ``cloaca_bench_<hex>``, reached through ``search_path`` and
dropped afterwards.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

LOCK_PREFIX = "cloaca-tests:db:"
LOCK_TTL = 900
SCHEMA_PREFIX = "cloaca_bench_"


def redis_address() -> tuple[str, int]:
    host = os.environ.get("CLOACA_TEST_REDIS_HOST", "127.0.0.1")
    return host, int(os.environ.get("CLOACA_TEST_REDIS_PORT", "6379"))


def postgres_url() -> str:
    host = os.environ.get("CLOACA_TEST_POSTGRES_HOST", "127.0.0.1")
    port = os.environ.get("CLOACA_TEST_POSTGRES_PORT", "5432")
    return os.environ.get(
        "BENCH_POSTGRES_URL",
        os.environ.get("CLOACA_TEST_POSTGRES_URL", f"postgresql+psycopg://postgres@{host}:{port}/test"),
    )


class Services:
    """The benchmark's Redis database and PostgreSQL schemas; ``close()`` releases everything."""

    def __init__(self) -> None:
        import redis
        from sqlalchemy import create_engine

        self.host, self.port = redis_address()
        self._admin = redis.Redis(host=self.host, port=self.port, db=0)
        self._owner = f"bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.db = self._reserve()
        self.redis_url = f"redis://{self.host}:{self.port}/{self.db}"
        self.redis = redis.Redis(host=self.host, port=self.port, db=self.db)
        self.redis.flushdb()
        self.pg_url = postgres_url()
        self.pg = create_engine(self.pg_url, isolation_level="AUTOCOMMIT", pool_size=1)
        self.schemas: list[str] = []
        self.created: list[str] = []

    def _reserve(self) -> int:
        """A Redis database no test and no other benchmark uses (highest free of 1-15)."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for candidate in range(15, 0, -1):
                if self._admin.set(f"{LOCK_PREFIX}{candidate}", self._owner, nx=True, ex=LOCK_TTL):
                    return candidate
            time.sleep(0.5)
        raise RuntimeError("no free Redis database (1-15): tests or other benchmarks hold them all")

    def keep_reserved(self) -> None:
        """Renew the reservation (a full run can outlast its TTL)."""
        self._admin.expire(f"{LOCK_PREFIX}{self.db}", LOCK_TTL)

    def reset_redis(self) -> None:
        self.keep_reserved()
        self.redis.flushdb()

    def count(self, key: str) -> int:
        value = self.redis.get(key)
        return int(value) if value is not None else 0

    # -- PostgreSQL ----------------------------------------------------------

    @contextmanager
    def schema(self) -> Iterator[tuple[str, str]]:
        """A fresh schema and the store URL that reaches it; dropped on exit."""
        from sqlalchemy import text

        name = f"{SCHEMA_PREFIX}{uuid.uuid4().hex[:10]}"
        with self.pg.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
        self.schemas.append(name)
        self.created.append(name)
        separator = "&" if "?" in self.pg_url else "?"
        url = f"{self.pg_url}{separator}options={quote(f'-csearch_path={name}')}"
        try:
            yield name, url
        finally:
            self.drop_schema(name)

    def drop_schema(self, name: str) -> None:
        from sqlalchemy import text

        with self.pg.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        if name in self.schemas:
            self.schemas.remove(name)

    def rows_written(self, schema: str, table: str | None = None) -> int:
        """Rows inserted, updated and deleted in ``schema`` (or one ``table`` of it) so far
        (``pg_stat_user_tables``)."""
        from sqlalchemy import text

        only = " AND relname = :table" if table else ""
        with self.pg.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            value: Any = conn.execute(
                text(
                    "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) "
                    f"FROM pg_stat_user_tables WHERE schemaname = :schema{only}"
                ),
                {"schema": schema, "table": table},
            ).scalar()
        return int(value or 0)

    def settled_rows_written(self, schema: str, settle: float = 1.2, timeout: float = 15.0,
                             table: str | None = None) -> int:
        """``rows_written`` once it stops moving.

        PostgreSQL 15 backends report their counts at most once a second (and
        when they exit), so the figure is read until two reads ``settle``
        seconds apart agree.
        """
        deadline = time.monotonic() + timeout
        last = self.rows_written(schema, table)
        while True:
            time.sleep(settle)
            current = self.rows_written(schema, table)
            if current == last or time.monotonic() > deadline:
                return current
            last = current

    def server_versions(self) -> tuple[str, str]:
        from sqlalchemy import text

        redis_version = str(self.redis.info("server").get("redis_version", "?"))
        with self.pg.connect() as conn:
            pg_version = str(conn.execute(text("SHOW server_version")).scalar())
        return redis_version, pg_version

    def close(self) -> None:
        for name in list(self.schemas):
            self.drop_schema(name)
        self.pg.dispose()
        try:
            self.redis.flushdb()
        finally:
            self.redis.close()
            if self._admin.get(f"{LOCK_PREFIX}{self.db}") == self._owner.encode():
                self._admin.delete(f"{LOCK_PREFIX}{self.db}")
            self._admin.close()
