"""parse_duration: poll intervals and other durations, and their errors."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cloaca_celery import parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("100ms", 0.1),
        ("5s", 5.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("1.5m", 90.0),
        (" 2s ", 2.0),
        (timedelta(seconds=3), 3.0),
        (timedelta(milliseconds=250), 0.25),
        (timedelta(minutes=2), 120.0),
        (7, 7.0),
        (0.5, 0.5),
        (2.25, 2.25),
    ],
)
def test_valid_durations(value: object, seconds: float) -> None:
    parsed = parse_duration(value, "poll_interval")  # type: ignore[arg-type]
    assert isinstance(parsed, float)
    assert parsed == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(0, id="zero-int"),
        pytest.param(0.0, id="zero-float"),
        pytest.param("0s", id="zero-string"),
        pytest.param("0ms", id="zero-ms"),
        pytest.param(timedelta(0), id="zero-timedelta"),
        pytest.param(-1, id="negative-int"),
        pytest.param(-0.5, id="negative-float"),
        pytest.param("-5s", id="negative-string"),
        pytest.param(timedelta(seconds=-5), id="negative-timedelta"),
        pytest.param("abc", id="abc"),
        pytest.param("5", id="no-unit"),
        pytest.param("5x", id="bad-unit"),
        pytest.param("s", id="no-number"),
        pytest.param("", id="empty"),
        pytest.param(None, id="None"),
        pytest.param(True, id="True"),
        pytest.param(False, id="False"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(float("nan"), id="nan"),
        pytest.param([5], id="list"),
    ],
)
def test_invalid_durations_raise_value_error_naming_what(value: object) -> None:
    with pytest.raises(ValueError, match="my_setting_name"):
        parse_duration(value, "my_setting_name")  # type: ignore[arg-type]
