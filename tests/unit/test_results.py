"""TriggerResult: skip or fire, with a Context, a dict or nothing."""

from __future__ import annotations

import pytest

from cloaca_celery import Context, TriggerResult


def test_skip() -> None:
    result = TriggerResult.skip()
    assert result.is_skip_result() is True
    assert result.is_fire_result() is False
    assert result.context is None


def test_fire_without_context() -> None:
    result = TriggerResult.fire()
    assert result.is_fire_result() is True
    assert result.is_skip_result() is False
    assert result.context is None


def test_fire_with_none() -> None:
    result = TriggerResult.fire(None)
    assert result.is_fire_result() is True
    assert result.context is None


def test_fire_with_a_context_keeps_it() -> None:
    ctx = Context({"key": "value"})
    result = TriggerResult.fire(ctx)
    assert result.is_fire_result() is True
    assert isinstance(result.context, Context)
    assert result.context == {"key": "value"}


def test_fire_with_a_dict_gives_a_context() -> None:
    result = TriggerResult.fire({"order_id": 7, "tags": ["a"]})
    assert result.is_fire_result() is True
    assert isinstance(result.context, Context)
    assert result.context.to_dict() == {"order_id": 7, "tags": ["a"]}


def test_fire_with_a_dict_checks_its_values() -> None:
    with pytest.raises(TypeError, match="blob"):
        TriggerResult.fire({"blob": b"bytes"})


@pytest.mark.parametrize("value", [42, "text", [1, 2], 1.5])
def test_fire_with_something_else_raises_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="fire"):
        TriggerResult.fire(value)  # type: ignore[arg-type]


def test_results_compare_by_kind_and_context() -> None:
    assert TriggerResult.skip() == TriggerResult.skip()
    assert TriggerResult.fire({"a": 1}) == TriggerResult.fire(Context({"a": 1}))
    assert TriggerResult.fire({"a": 1}) != TriggerResult.fire({"a": 2})
    assert TriggerResult.fire() != TriggerResult.skip()


def test_a_database_error_reaches_the_history_without_its_statement_or_parameters() -> None:
    from sqlalchemy.exc import IntegrityError

    from cloaca_celery.logs import error_text

    exc = IntegrityError("INSERT INTO t VALUES (?)", ("secret-value",), Exception("UNIQUE constraint failed"))
    text = error_text(exc)
    assert "secret-value" not in text and "INSERT" not in text and text.startswith("IntegrityError")
    assert error_text(ValueError("bad\nsecond line")) == "ValueError: bad\nsecond line"
