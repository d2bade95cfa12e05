"""Options of :func:`cloaca_celery.install`, from keyword arguments or ``app.conf``.

Every option can be given to ``install(app, name=value)`` or set as the Celery
setting ``cloaca_<name>`` (``CELERY_CLOACA_<NAME>`` in Django settings with the
``CELERY`` namespace). Keyword arguments win. Values are checked when the
settings are first resolved, and a bad one raises ``ConfigurationError``
naming the setting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .durations import parse_duration
from .errors import ConfigurationError

DEFAULTS: dict[str, Any] = {
    "store": "auto",
    "database_url": None,
    "home": ".cloaca",
    "embedded": "auto",
    "dispatch_interval": None,
    "dispatch_batch_size": 5000,
    "poll_time_limit": "30s",
    "poll_queue": None,
    "dispatch_queue": None,
    "max_context_bytes": 1024 * 1024,
    "heartbeat_interval": "10s",
    "heartbeat_misses": 3,
    "queued_timeout": "6h",
    "sweep_interval": "5s",
    "history_retention": "30d",
    "health_flush_interval": "5s",
}
"""Every ``cloaca_`` setting and its default."""

RETIRED = {
    "claim_grace": "liveness is judged by heartbeats now: see cloaca_heartbeat_interval and "
                   "cloaca_heartbeat_misses",
    "claim_ttl": "a claim no longer expires by age: a running workflow keeps it however long it runs, and "
                 "cloaca_queued_timeout bounds one whose steps never start",
}
"""Settings of earlier versions that are accepted, ignored, and named in a start-up warning."""


@dataclass(frozen=True)
class Settings:
    """Resolved options; see :data:`DEFAULTS` and ``docs/configuration.md``."""

    store: str
    database_url: str
    database_url_given: bool
    home: Path
    embedded: bool
    dispatch_interval: float | None
    dispatch_batch_size: int
    poll_time_limit: float
    poll_queue: str | None
    dispatch_queue: str | None
    max_context_bytes: int
    heartbeat_interval: float
    heartbeat_misses: int
    queued_timeout: float
    sweep_interval: float
    history_retention: float | None
    health_flush_interval: float = 5.0
    retired: tuple[str, ...] = ()

    @property
    def lease(self) -> float:
        """How long a step's lease lasts without a heartbeat: the missed renewals that make it lost."""
        return self.heartbeat_interval * self.heartbeat_misses

    @property
    def poll_hard_time_limit(self) -> float:
        """The hard limit that kills a poll the soft limit could not stop."""
        return self.poll_time_limit + max(5.0, self.poll_time_limit * 0.1)


def check_option_names(options: Mapping[str, Any]) -> None:
    unknown = sorted(set(options) - set(DEFAULTS) - set(RETIRED))
    if unknown:
        raise ConfigurationError(
            f"install(): unknown option(s) {', '.join(unknown)}; "
            f"known options are {', '.join(sorted(DEFAULTS))}"
        )


def _conf_value(conf: Any, name: str) -> Any:
    for key in (f"cloaca_{name}", f"CLOACA_{name.upper()}"):
        try:
            value = conf.get(key)
        except Exception:  # noqa: BLE001 - a conf that cannot answer has no value
            value = None
        if value is not None:
            return value
    return None


NONE_ALLOWED = frozenset({"history_retention"})
"""Settings for which ``None`` is a value (keep everything), not "unset"."""


def _conf_sets_none(conf: Any, name: str) -> bool:
    for key in (f"cloaca_{name}", f"CLOACA_{name.upper()}"):
        try:
            if key in conf and conf.get(key) is None:
                return True
        except Exception:  # noqa: BLE001 - a conf that cannot answer sets nothing
            continue
    return False


def resolve_settings(conf: Any, options: Mapping[str, Any]) -> Settings:
    """Merge ``options`` over ``app.conf`` over :data:`DEFAULTS` and check them."""
    raw: dict[str, Any] = {}
    for name, default in DEFAULTS.items():
        if name in options:
            raw[name] = options[name]
        else:
            value = _conf_value(conf, name)
            if value is None and name in NONE_ALLOWED and _conf_sets_none(conf, name):
                raw[name] = None
            else:
                raw[name] = default if value is None else value

    home = Path(os.path.expanduser(str(raw["home"])))
    embedded_opt = raw["embedded"]
    if embedded_opt == "auto":
        embedded = not _broker_configured(conf)
    elif isinstance(embedded_opt, bool):
        embedded = embedded_opt
    else:
        raise ConfigurationError(
            f"setting cloaca_embedded: expected True, False or 'auto', got {embedded_opt!r}"
        )

    store = raw["store"]
    if store not in ("auto", "sql", "django"):
        raise ConfigurationError(
            f"setting cloaca_store: expected 'auto', 'sql' or 'django', got {store!r}"
        )
    database_url = raw["database_url"]
    database_url_given = database_url is not None
    if database_url is None:
        database_url = f"sqlite:///{(home / 'cloaca.db').resolve()}"
    elif not isinstance(database_url, str) or "://" not in database_url:
        raise ConfigurationError(
            "setting cloaca_database_url: expected a database URL such as "
            "'sqlite:///cloaca.db' or 'postgresql://host/db'"
        )

    dispatch_interval = raw["dispatch_interval"]
    if dispatch_interval is not None:
        dispatch_interval = _duration(dispatch_interval, "dispatch_interval")

    batch = _integer(raw["dispatch_batch_size"], "dispatch_batch_size", 1, "a positive integer")
    misses = _integer(raw["heartbeat_misses"], "heartbeat_misses", 2,
                      "an integer of at least 2 (how many missed renewals make a step's execution lost)")
    retention = raw["history_retention"]
    if retention is not None:
        retention = _duration(retention, "history_retention")
    retired = tuple(sorted(
        name for name in RETIRED if name in options or _conf_value(conf, name) is not None
    ))
    max_bytes = _integer(raw["max_context_bytes"], "max_context_bytes", 2, "a positive integer")
    for key in ("poll_queue", "dispatch_queue"):
        if raw[key] is not None and not isinstance(raw[key], str):
            raise ConfigurationError(f"setting cloaca_{key}: expected a queue name, got {raw[key]!r}")

    return Settings(
        store=store,
        database_url=database_url,
        database_url_given=database_url_given,
        home=home,
        embedded=embedded,
        dispatch_interval=dispatch_interval,
        dispatch_batch_size=batch,
        poll_time_limit=_duration(raw["poll_time_limit"], "poll_time_limit"),
        poll_queue=raw["poll_queue"],
        dispatch_queue=raw["dispatch_queue"],
        max_context_bytes=max_bytes,
        heartbeat_interval=_duration(raw["heartbeat_interval"], "heartbeat_interval"),
        heartbeat_misses=misses,
        queued_timeout=_duration(raw["queued_timeout"], "queued_timeout"),
        sweep_interval=_duration(raw["sweep_interval"], "sweep_interval"),
        history_retention=retention,
        health_flush_interval=_duration(raw["health_flush_interval"], "health_flush_interval"),
        retired=retired,
    )


def _integer(value: Any, name: str, minimum: int, expected: str) -> int:
    """An integer setting: an int, or its decimal digits in a string (from an environment variable)."""
    number = int(value) if isinstance(value, str) and value.strip().isdigit() else value
    if not isinstance(number, int) or isinstance(number, bool) or number < minimum:
        raise ConfigurationError(f"setting cloaca_{name}: expected {expected}, got {value!r}")
    return number


def _duration(value: Any, name: str) -> float:
    try:
        return parse_duration(value, f"setting cloaca_{name}")
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def _broker_configured(conf: Any) -> bool:
    for key in ("broker_url", "broker_read_url", "broker_write_url"):
        try:
            if getattr(conf, key, None) or conf.get(key):
                return True
        except Exception:  # noqa: BLE001 - an unreadable key counts as unset
            continue
    return bool(os.environ.get("CELERY_BROKER_URL"))


def setting_names() -> list[str]:
    return [f.name for f in fields(Settings)]
