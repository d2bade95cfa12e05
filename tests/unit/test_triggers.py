"""The @trigger decorator: registration, defaults and the errors it raises at decoration."""

from __future__ import annotations

from datetime import timedelta

import pytest

import cloaca_celery as cloaca
from cloaca_celery import TriggerResult, trigger
from cloaca_celery.triggers import triggers


def test_returns_the_function_unchanged_and_callable() -> None:
    def my_trigger() -> TriggerResult:
        return TriggerResult.fire({"x": 1})

    decorated = trigger(workflow="my_workflow")(my_trigger)
    assert decorated is my_trigger
    result = decorated()
    assert result.is_fire_result()
    assert result.context == {"x": 1}


def test_defaults_are_recorded_in_the_registry() -> None:
    @cloaca.trigger(workflow="my_workflow")
    def default_trigger() -> TriggerResult:
        return TriggerResult.skip()

    definition = triggers.get("default_trigger")
    assert definition.name == "default_trigger"
    assert definition.workflow == "my_workflow"
    assert definition.poll_interval == 5.0
    assert definition.allow_concurrent is False
    assert definition.takes_state is False
    assert definition.function is default_trigger
    assert "default_trigger" in triggers


def test_explicit_name_interval_and_concurrency() -> None:
    @trigger(workflow="file_processor", name="file_watcher", poll_interval="100ms",
             allow_concurrent=True)
    def watch() -> TriggerResult:
        return TriggerResult.skip()

    definition = triggers.get("file_watcher")
    assert definition.workflow == "file_processor"
    assert definition.poll_interval == pytest.approx(0.1)
    assert definition.allow_concurrent is True
    assert "watch" not in triggers


@pytest.mark.parametrize(
    ("interval", "seconds"),
    [("1m", 60.0), ("1h", 3600.0), (timedelta(seconds=2), 2.0), (3, 3.0), (0.25, 0.25)],
)
def test_poll_interval_forms(interval: object, seconds: float) -> None:
    @trigger(workflow="wf", name="interval_trigger", poll_interval=interval)  # type: ignore[arg-type]
    def fn() -> bool:
        return False

    assert triggers.get("interval_trigger").poll_interval == pytest.approx(seconds)


@pytest.mark.parametrize("interval", [0, "0s", -1, "-5s", "soon", "5", "5x", "", None])
def test_bad_poll_interval_raises_at_decoration_naming_the_trigger(interval: object) -> None:
    def fn() -> bool:
        return False

    with pytest.raises(ValueError, match="bad_interval_trigger"):
        trigger(workflow="wf", name="bad_interval_trigger", poll_interval=interval)(fn)  # type: ignore[arg-type]
    assert "bad_interval_trigger" not in triggers


def test_duplicate_name_from_another_function_raises_naming_it() -> None:
    @trigger(workflow="wf", name="shared_name")
    def first() -> bool:
        return False

    def second() -> bool:
        return True

    with pytest.raises(ValueError, match="shared_name"):
        trigger(workflow="wf", name="shared_name")(second)
    assert triggers.get("shared_name").function is first


def test_function_with_a_required_parameter_other_than_state_is_refused() -> None:
    def needs_arg(path: str) -> bool:
        return bool(path)

    with pytest.raises(ValueError, match="needs_arg"):
        trigger(workflow="wf")(needs_arg)
    assert "needs_arg" not in triggers


def test_function_with_two_required_parameters_is_refused() -> None:
    def two(state: dict[str, object], extra: int) -> bool:
        return bool(extra)

    with pytest.raises(ValueError, match="state"):
        trigger(workflow="wf")(two)


def test_optional_parameters_are_allowed() -> None:
    @trigger(workflow="wf")
    def optional(limit: int = 3) -> bool:
        return limit > 0

    assert triggers.get("optional").takes_state is False


def test_function_taking_state_is_marked() -> None:
    @trigger(workflow="wf")
    def stateful(state: dict[str, object]) -> bool:
        return bool(state)

    assert triggers.get("stateful").takes_state is True


@pytest.mark.parametrize("workflow", ["", "   "])
def test_empty_workflow_is_refused(workflow: str) -> None:
    def fn() -> bool:
        return False

    with pytest.raises(ValueError, match="workflow"):
        trigger(workflow=workflow, name="no_workflow")(fn)
    assert "no_workflow" not in triggers


def test_non_string_workflow_is_refused() -> None:
    def fn() -> bool:
        return False

    with pytest.raises(ValueError, match="workflow"):
        trigger(workflow=42, name="int_workflow")(fn)  # type: ignore[arg-type]


def test_empty_name_is_refused() -> None:
    def fn() -> bool:
        return False

    with pytest.raises(ValueError, match="name"):
        trigger(workflow="wf", name="")(fn)


def test_non_bool_allow_concurrent_is_refused() -> None:
    def fn() -> bool:
        return False

    with pytest.raises(ValueError, match="allow_concurrent"):
        trigger(workflow="wf", name="bad_flag", allow_concurrent="yes")(fn)  # type: ignore[arg-type]


def test_bare_decorator_gives_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"@trigger\(workflow="):

        @trigger  # type: ignore[arg-type]
        def bare() -> bool:
            return False

    assert "bare" not in triggers


def test_unknown_trigger_lookup_raises_key_error() -> None:
    with pytest.raises(KeyError, match="no_such_trigger"):
        triggers.get("no_such_trigger")


def test_names_with_surrounding_whitespace_are_refused() -> None:
    with pytest.raises(ValueError, match="must not start or end with whitespace"):
        trigger(workflow="wf", name="orders ")(lambda: False)
