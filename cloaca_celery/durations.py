"""Parsing of poll intervals and other durations: ``"100ms"``, ``"5s"``, ``"1m"``, ``"1h"``."""

from __future__ import annotations

import math
import re
from datetime import timedelta

Duration = str | int | float | timedelta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# ASCII digits and spaces only: an Arabic-Indic five followed by "s" is not a duration.
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)\s*$", re.ASCII)


def parse_duration(value: Duration, what: str = "duration") -> float:
    """Return ``value`` in seconds (a positive float).

    Accepts ``"100ms"``, ``"5s"``, ``"1.5m"``, ``"1h"``, ``"1d"``, a
    ``timedelta`` or a number of seconds. Zero, negative, infinite or
    malformed values raise ``ValueError`` naming ``what``.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what}: {value!r} is not a duration; use e.g. '5s', '100ms' or 5")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(
                f"{what}: an integer of {value.bit_length()} bits is too large for a duration; "
                "use a number of seconds such as 5 or a string such as '5s'"
            ) from None
    elif isinstance(value, float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        if match is None:
            raise ValueError(
                f"{what}: {value!r} is not a duration; write a number followed by "
                "ms, s, m, h or d (e.g. '100ms', '5s', '1m', '1h')"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(
            f"{what}: {value!r} ({type(value).__name__}) is not a duration; "
            "use a string such as '5s', a timedelta or a number of seconds"
        )
    if not math.isfinite(seconds):
        raise ValueError(
            f"{what}: {value!r} is not a finite duration; use a number of seconds "
            "greater than zero such as 5 or a string such as '5s'"
        )
    if seconds <= 0:
        raise ValueError(f"{what}: {value!r} must be greater than zero (e.g. '100ms', '5s', 5)")
    return seconds


def format_duration(seconds: float) -> str:
    """A short human form of ``seconds``: ``100ms``, ``5s``, ``1m``, ``1.5h``."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and (seconds / size) == round(seconds / size, 3):
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
