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


def test_overlap_policies_and_their_allow_concurrent_names() -> None:
    @trigger(workflow="wf", name="ov_default")
    def a() -> bool:
        return False

    @trigger(workflow="wf", name="ov_concurrent", allow_concurrent=True)
    def b() -> bool:
        return False

    @trigger(workflow="wf", name="ov_buffer", overlap="buffer_all", max_pending=5)
    def c() -> bool:
        return False

    assert triggers.get("ov_default").overlap == "skip" and not triggers.get("ov_default").allow_concurrent
    assert triggers.get("ov_concurrent").overlap == "allow" and triggers.get("ov_concurrent").allow_concurrent
    assert triggers.get("ov_buffer").max_pending == 5
    assert triggers.get("ov_buffer").spec().overlap == "buffer_all"


@pytest.mark.parametrize(("options", "needle"), [
    ({"overlap": "queue"}, "overlap='queue' is not a policy"),
    ({"overlap": "allow", "allow_concurrent": True}, "not both"),
    ({"overlap": "skip", "allow_concurrent": False}, "not both"),
    ({"allow_concurrent": "yes"}, "allow_concurrent must be True or False"),
    ({"dedup_key": []}, "dedup_key must be a list"),
    ({"dedup_key": 5}, "dedup_key must be a list"),
    ({"overlap": "buffer_one", "max_pending": 3}, "max_pending only applies to overlap='buffer_all'"),
    ({"overlap": "buffer_all", "max_pending": 0}, "max_pending must be a positive integer"),
])
def test_bad_overlap_options_are_refused_at_decoration_naming_the_trigger(
    options: dict[str, object], needle: str
) -> None:
    with pytest.raises(ValueError, match=r"trigger 'bad_overlap'") as raised:
        trigger(workflow="wf", name="bad_overlap", **options)(lambda: False)  # type: ignore[arg-type]
    assert needle in str(raised.value)


def test_the_dedup_key_says_what_the_same_work_is() -> None:
    from cloaca_celery import context_hash
    @trigger(workflow="wf", name="by_order", dedup_key=["order_id"])
    def by_order() -> bool:
        return False

    @trigger(workflow="wf", name="by_path", dedup_key=lambda c: c["path"].lower())
    def by_path() -> bool:
        return False

    @trigger(workflow="wf", name="whole")
    def whole() -> bool:
        return False

    order = triggers.get("by_order")
    assert order.dedup_hash({"order_id": 7, "seen": 1}) == order.dedup_hash({"seen": 2, "order_id": 7})
    assert order.dedup_hash({"order_id": 7}) != order.dedup_hash({"order_id": 8})
    with pytest.raises(TypeError, match="trigger 'by_order': dedup_key field"):
        order.dedup_hash({"other": 1})
    path = triggers.get("by_path")
    assert path.dedup_hash({"path": "/A.csv", "size": 1}) == path.dedup_hash({"path": "/a.csv"})
    assert triggers.get("whole").dedup_hash({"a": 1}) == context_hash({"a": 1})
