"""@task steps, WorkflowBuilder, register_workflow, and running the canvases eagerly."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, chain, group
from celery.canvas import Signature

from cloaca_celery import Context, WorkflowBuilder, register_workflow, task
from cloaca_celery.workflows import workflows


@pytest.fixture
def app() -> Iterator[Celery]:
    """A throwaway app that runs every canvas in this process."""
    celery_app = Celery("t", set_as_current=False)
    celery_app.conf.update(task_always_eager=True, task_eager_propagates=True)
    yield celery_app
    celery_app.close()


def level_ids(definition: Any) -> list[list[str]]:
    return [[spec.id for spec in level] for level in definition.levels]


# -- @task --------------------------------------------------------------------


def test_task_becomes_a_celery_task() -> None:
    @task()
    def extract(context: Context) -> Context:
        return context

    assert callable(extract.s)
    assert extract.name == f"{__name__}.test_task_becomes_a_celery_task.<locals>.extract"
    assert isinstance(extract.s({"k": 1}), Signature)


def test_task_name_option_is_passed_to_celery() -> None:
    @task(name="custom.step_name")
    def named(context: Context) -> None:
        return None

    assert named.name == "custom.step_name"


def test_calling_a_task_with_a_dict_returns_a_dict() -> None:
    @task()
    def add_one(context: Context) -> Context:
        assert isinstance(context, Context)
        context.set("n", context.get("n") + 1)
        return context

    out = add_one({"n": 1, "keep": "me"})
    assert type(out) is dict
    assert out == {"n": 2, "keep": "me"}


def test_task_may_return_a_plain_dict() -> None:
    @task()
    def replace(context: Context) -> dict[str, Any]:
        return {"only": "this"}

    assert replace({"old": 1}) == {"only": "this"}


def test_task_returning_none_keeps_the_context() -> None:
    @task()
    def observe(context: Context) -> None:
        return None

    assert observe({"k": 1, "l": [1, 2]}) == {"k": 1, "l": [1, 2]}


def test_task_returning_none_keeps_in_place_changes() -> None:
    @task()
    def mutate(context: Context) -> None:
        context.set("added", True)

    assert mutate({"k": 1}) == {"k": 1, "added": True}


def test_task_returning_a_non_dict_raises_type_error_naming_the_task() -> None:
    # One Celery name per variant: a nested @task in a parametrized test would reuse the first.
    for index, bad in enumerate([42, "text", [1, 2]]):

        @task(id=f"wrong_return_{index}", name=f"unit.wrong_return_{index}")
        def wrong(context: Context, bad: object = bad) -> object:
            return bad

        with pytest.raises(TypeError, match=f"wrong_return_{index}"):
            wrong({"k": 1})


def test_task_returning_a_non_json_dict_raises_type_error_naming_the_task() -> None:
    @task(id="bytes_return")
    def wrong(context: Context) -> dict[str, Any]:
        return {"blob": b"bytes"}

    with pytest.raises(TypeError, match="bytes_return"):
        wrong({})


def test_task_without_parentheses_gives_a_clear_error() -> None:
    def step(context: Context) -> None:
        return None

    with pytest.raises(ValueError, match=r"@task\(\)"):
        task(step)  # type: ignore[arg-type]


def test_task_that_cannot_take_the_context_is_refused() -> None:
    def two_args(context: Context, other: int) -> None:
        return None

    with pytest.raises(ValueError, match="one argument"):
        task(id="two_args")(two_args)


def test_task_with_a_non_json_serializer_is_refused() -> None:
    def step(context: Context) -> None:
        return None

    with pytest.raises(ValueError, match="JSON"):
        task(id="pickled", serializer="pickle")(step)


# -- WorkflowBuilder ----------------------------------------------------------


def test_builder_description_and_add_task_by_function_and_by_id() -> None:
    @task()
    def first(context: Context) -> None:
        return None

    @task(id="second_step", dependencies=[first])
    def second(context: Context) -> None:
        return None

    builder = WorkflowBuilder("pipeline")
    assert builder.description("Does things") is builder
    assert builder.add_task(first) is builder
    builder.add_task("second_step")
    built = builder.build()
    assert built.name == "pipeline"
    assert built.description == "Does things"
    assert built.task_ids == ["first", "second_step"]
    assert "pipeline" not in workflows


def test_add_task_of_an_unknown_id_raises() -> None:
    builder = WorkflowBuilder("pipeline")
    with pytest.raises(ValueError, match="no_such_task"):
        builder.add_task("no_such_task")


def test_add_task_of_an_undecorated_function_raises() -> None:
    def plain(context: Context) -> None:
        return None

    with pytest.raises(ValueError, match="pipeline"):
        WorkflowBuilder("pipeline").add_task(plain)


def test_add_task_twice_raises() -> None:
    @task()
    def once(context: Context) -> None:
        return None

    builder = WorkflowBuilder("pipeline").add_task(once)
    with pytest.raises(ValueError, match="once"):
        builder.add_task("once")


def test_build_of_an_empty_workflow_raises() -> None:
    with pytest.raises(ValueError, match="empty_wf"):
        WorkflowBuilder("empty_wf").build()


def test_empty_builder_name_is_refused() -> None:
    with pytest.raises(ValueError, match="name"):
        WorkflowBuilder("")


def test_linear_chain_gives_one_task_per_level() -> None:
    @task()
    def one(context: Context) -> None:
        return None

    @task(dependencies=[one])
    def two(context: Context) -> None:
        return None

    @task(dependencies=["two"])
    def three(context: Context) -> None:
        return None

    builder = WorkflowBuilder("linear")
    for step in (one, two, three):
        builder.add_task(step)
    assert level_ids(builder.build()) == [["one"], ["two"], ["three"]]


def test_levels_follow_dependencies_not_the_order_of_add_task() -> None:
    @task()
    def root(context: Context) -> None:
        return None

    @task(dependencies=[root])
    def leaf(context: Context) -> None:
        return None

    builder = WorkflowBuilder("reversed").add_task(leaf).add_task(root)
    assert level_ids(builder.build()) == [["root"], ["leaf"]]


def test_diamond_levels() -> None:
    @task()
    def a(context: Context) -> None:
        return None

    @task(dependencies=[a])
    def b(context: Context) -> None:
        return None

    @task(dependencies=[a])
    def c(context: Context) -> None:
        return None

    @task(dependencies=[b, c])
    def d(context: Context) -> None:
        return None

    builder = WorkflowBuilder("diamond")
    for step in (a, b, c, d):
        builder.add_task(step)
    assert level_ids(builder.build()) == [["a"], ["b", "c"], ["d"]]


def test_missing_dependency_raises_at_build_naming_workflow_and_dependency() -> None:
    @task(dependencies=["not_added"])
    def needs(context: Context) -> None:
        return None

    builder = WorkflowBuilder("incomplete").add_task(needs)
    with pytest.raises(ValueError, match="incomplete") as info:
        builder.build()
    assert "not_added" in str(info.value)
    assert "needs" in str(info.value)


def test_cycle_raises_at_build_naming_the_cycle() -> None:
    @task(id="cyc_a", dependencies=["cyc_b"])
    def cyc_a(context: Context) -> None:
        return None

    @task(id="cyc_b", dependencies=["cyc_a"])
    def cyc_b(context: Context) -> None:
        return None

    @task(id="cyc_root")
    def cyc_root(context: Context) -> None:
        return None

    builder = WorkflowBuilder("loopy").add_task(cyc_root).add_task(cyc_a).add_task(cyc_b)
    with pytest.raises(ValueError, match="loopy") as info:
        builder.build()
    message = str(info.value)
    assert "cycle" in message
    assert "'cyc_a' -> 'cyc_b' -> 'cyc_a'" in message


def test_self_dependency_is_a_cycle() -> None:
    @task(id="selfish", dependencies=["selfish"])
    def selfish(context: Context) -> None:
        return None

    with pytest.raises(ValueError, match="'selfish' -> 'selfish'"):
        WorkflowBuilder("self_loop").add_task(selfish).build()


def test_with_block_registers_on_exit() -> None:
    @task()
    def only(context: Context) -> None:
        return None

    with WorkflowBuilder("registered_wf") as builder:
        builder.description("registered by the with block")
        builder.add_task(only)
        assert "registered_wf" not in workflows
    definition = workflows.get("registered_wf")
    assert definition.description == "registered by the with block"
    assert level_ids(definition) == [["only"]]


def test_with_block_that_raises_registers_nothing() -> None:
    @task()
    def step(context: Context) -> None:
        return None

    with pytest.raises(RuntimeError, match="boom"), WorkflowBuilder("aborted_wf") as builder:
        builder.add_task(step)
        raise RuntimeError("boom")
    assert "aborted_wf" not in workflows


def test_with_block_with_a_bad_graph_raises_on_exit_and_registers_nothing() -> None:
    @task(dependencies=["absent"])
    def step(context: Context) -> None:
        return None

    with pytest.raises(ValueError, match="absent"), WorkflowBuilder("bad_graph") as builder:
        builder.add_task(step)
    assert "bad_graph" not in workflows


# -- running built workflows ---------------------------------------------------


def test_linear_workflow_canvas_passes_the_context_through_the_steps(app: Celery) -> None:
    seen: list[dict[str, Any]] = []

    @task()
    def fetch(context: Context) -> Context:
        seen.append(context.to_dict())
        context.set("fetched", True)
        return context

    @task(dependencies=[fetch])
    def store(context: Context) -> dict[str, Any]:
        seen.append(context.to_dict())
        return {**context.to_dict(), "stored": context.get("k") * 10}

    with WorkflowBuilder("etl") as builder:
        builder.add_task(fetch).add_task(store)

    canvas = workflows.get("etl").build_canvas(app, {"k": 1})
    assert isinstance(canvas, Signature)
    result = canvas.apply().get()
    assert seen == [{"k": 1}, {"k": 1, "fetched": True}]
    assert result == {"k": 1, "fetched": True, "stored": 10}


def test_single_step_workflow_runs(app: Celery) -> None:
    @task()
    def alone(context: Context) -> Context:
        context.set("done", True)
        return context

    with WorkflowBuilder("solo") as builder:
        builder.add_task(alone)

    result = workflows.get("solo").build_canvas(app, {"k": 1}).apply().get()
    assert result == {"k": 1, "done": True}


def test_diamond_join_sees_keys_from_both_branches(app: Celery) -> None:
    joined: list[dict[str, Any]] = []

    @task()
    def start(context: Context) -> Context:
        context.set("start", 1)
        return context

    @task(dependencies=[start])
    def left(context: Context) -> Context:
        assert context.get("start") == 1
        context.set("left", "L")
        return context

    @task(dependencies=[start])
    def right(context: Context) -> Context:
        assert context.get("start") == 1
        context.set("right", "R")
        return context

    @task(dependencies=[left, right])
    def join(context: Context) -> Context:
        joined.append(context.to_dict())
        context.set("joined", True)
        return context

    with WorkflowBuilder("diamond_run") as builder:
        for step in (start, left, right, join):
            builder.add_task(step)

    result = workflows.get("diamond_run").build_canvas(app, {"k": 1}).apply().get()
    assert joined == [{"k": 1, "start": 1, "left": "L", "right": "R"}]
    assert result == {"k": 1, "start": 1, "left": "L", "right": "R", "joined": True}


# -- register_workflow ---------------------------------------------------------


def test_register_workflow_with_a_signature_passes_the_context_first(app: Celery) -> None:
    received: list[tuple[Any, ...]] = []

    @app.task(name="plain.single")
    def single(*args: Any) -> str:
        received.append(args)
        return "ok"

    definition = register_workflow("single_wf", single.s())
    assert workflows.get("single_wf") is definition
    assert definition.build_canvas(app, {"k": 1}).apply().get() == "ok"
    assert received == [({"k": 1},)]


def test_register_workflow_with_a_signature_keeps_its_own_arguments(app: Celery) -> None:
    received: list[tuple[Any, ...]] = []

    @app.task(name="plain.with_args")
    def with_args(*args: Any) -> None:
        received.append(args)

    definition = register_workflow("args_wf", with_args.s("extra"))
    definition.build_canvas(app, {"k": 1}).apply()
    assert received == [({"k": 1}, "extra")]


def test_register_workflow_with_a_chain_is_registered(app: Celery) -> None:
    @app.task(name="plain.chain_a")
    def chain_a(context: Any) -> Any:
        return context

    @app.task(name="plain.chain_b")
    def chain_b(previous: Any) -> Any:
        return previous

    definition = register_workflow("chain_wf", chain(chain_a.s(), chain_b.s()), description="two steps")
    assert workflows.get("chain_wf") is definition
    assert definition.description == "two steps"
    assert isinstance(definition.build_canvas(app, {"k": 1}), Signature)


def test_register_workflow_with_a_chain_passes_the_context_to_the_first_task(app: Celery) -> None:
    calls: list[tuple[str, tuple[Any, ...]]] = []

    @app.task(name="plain.first")
    def first(*args: Any) -> dict[str, Any]:
        calls.append(("first", args))
        return {"from_first": True}

    @app.task(name="plain.second")
    def second(*args: Any) -> str:
        calls.append(("second", args))
        return "done"

    register_workflow("plain_chain", chain(first.s(), second.s()))
    result = workflows.get("plain_chain").build_canvas(app, {"k": 1}).apply().get()
    assert result == "done"
    assert calls == [("first", ({"k": 1},)), ("second", ({"from_first": True},))]


def test_register_workflow_chain_can_be_built_again_for_another_context(app: Celery) -> None:
    calls: list[tuple[Any, ...]] = []

    @app.task(name="plain.again_first")
    def again_first(*args: Any) -> str:
        calls.append(args)
        return "x"

    @app.task(name="plain.again_second")
    def again_second(previous: Any) -> Any:
        return previous

    original = chain(again_first.s(), again_second.s())
    definition = register_workflow("again_chain", original)
    definition.build_canvas(app, {"run": 1}).apply()
    definition.build_canvas(app, {"run": 2}).apply()
    assert calls == [({"run": 1},), ({"run": 2},)]
    assert original.tasks[0].args == ()


def test_register_workflow_with_a_group_gives_every_member_the_context(app: Celery) -> None:
    calls: list[tuple[str, tuple[Any, ...]]] = []

    @app.task(name="plain.member_a")
    def member_a(*args: Any) -> str:
        calls.append(("a", args))
        return "a"

    @app.task(name="plain.member_b")
    def member_b(*args: Any) -> str:
        calls.append(("b", args))
        return "b"

    definition = register_workflow("group_wf", group(member_a.s(), member_b.s()))
    assert definition.build_canvas(app, {"k": 1}).apply().get() == ["a", "b"]
    assert sorted(calls) == [("a", ({"k": 1},)), ("b", ({"k": 1},))]


def test_register_workflow_with_a_factory(app: Celery) -> None:
    received: list[Any] = []

    @app.task(name="plain.factory_step")
    def factory_step(value: Any) -> Any:
        received.append(value)
        return value

    def factory(context: dict[str, Any]) -> Signature:
        return factory_step.si({"wrapped": context})

    definition = register_workflow("factory_wf", factory)
    assert workflows.get("factory_wf") is definition
    assert definition.build_canvas(app, {"k": 1}).apply().get() == {"wrapped": {"k": 1}}
    assert received == [{"wrapped": {"k": 1}}]


def test_factory_returning_a_non_signature_raises_naming_the_workflow(app: Celery) -> None:
    definition = register_workflow("lazy_wf", lambda context: "not a signature")
    with pytest.raises(ValueError, match="lazy_wf"):
        definition.build_canvas(app, {"k": 1})


@pytest.mark.parametrize("value", [42, "task.name", None, {"task": "x"}])
def test_register_workflow_with_a_non_callable_raises(value: object) -> None:
    with pytest.raises(ValueError, match="bad_wf"):
        register_workflow("bad_wf", value)  # type: ignore[arg-type]
    assert "bad_wf" not in workflows


def test_register_workflow_with_an_empty_name_raises(app: Celery) -> None:
    @app.task(name="plain.unnamed")
    def unnamed() -> None:
        return None

    with pytest.raises(ValueError, match="name"):
        register_workflow("", unnamed.s())


def test_register_workflow_twice_under_one_name_raises(app: Celery) -> None:
    @app.task(name="plain.dup_one")
    def dup_one() -> None:
        return None

    @app.task(name="plain.dup_two")
    def dup_two() -> None:
        return None

    first = register_workflow("dup_wf", dup_one.s())
    with pytest.raises(ValueError, match="dup_wf"):
        register_workflow("dup_wf", dup_two.s())
    assert workflows.get("dup_wf") is first


def test_builder_name_clashing_with_a_registered_workflow_raises(app: Celery) -> None:
    @app.task(name="plain.clash")
    def clash() -> None:
        return None

    @task()
    def step(context: Context) -> None:
        return None

    register_workflow("clash_wf", clash.s())
    with pytest.raises(ValueError, match="clash_wf"), WorkflowBuilder("clash_wf") as builder:
        builder.add_task(step)


def test_unknown_workflow_lookup_raises_key_error() -> None:
    with pytest.raises(KeyError, match="no_such_workflow"):
        workflows.get("no_such_workflow")
