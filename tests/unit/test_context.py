"""Context: the JSON-only mapping, its checks at put time, and the context hash."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloaca_celery import Context, TriggerResult
from cloaca_celery.context import context_hash

REPO_ROOT = Path(__file__).resolve().parents[2]


def canonical_sha256(data: dict[str, object]) -> str:
    """The hash DESIGN.md promises, computed independently of the library."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- the cloaca API -----------------------------------------------------------


def test_constructor_copies_the_data() -> None:
    source = {"a": 1, "nested": {"b": [1, 2]}}
    ctx = Context(source)
    source["a"] = 2
    assert ctx.get("a") == 1
    assert Context().to_dict() == {}
    assert Context(None).to_dict() == {}
    assert Context(Context({"x": "y"})).to_dict() == {"x": "y"}


def test_get_returns_value_or_default() -> None:
    ctx = Context({"a": 1})
    assert ctx.get("a") == 1
    assert ctx.get("missing") is None
    assert ctx.get("missing", "fallback") == "fallback"


def test_set_inserts_and_replaces() -> None:
    ctx = Context()
    ctx.set("a", 1)
    assert ctx.get("a") == 1
    ctx.set("a", [1, "two", None, True, 2.5, {"x": {}}])
    assert ctx.get("a") == [1, "two", None, True, 2.5, {"x": {}}]


def test_insert_adds_a_new_key() -> None:
    ctx = Context()
    ctx.insert("a", 1)
    assert ctx.to_dict() == {"a": 1}


def test_insert_refuses_an_existing_key_and_keeps_the_old_value() -> None:
    ctx = Context({"a": 1})
    with pytest.raises(ValueError, match="'a'"):
        ctx.insert("a", 2)
    assert ctx.get("a") == 1


def test_update_replaces_an_existing_key() -> None:
    ctx = Context({"a": 1})
    ctx.update("a", 2)
    assert ctx.get("a") == 2


def test_update_of_a_missing_key_raises_key_error() -> None:
    ctx = Context({"a": 1})
    with pytest.raises(KeyError, match="'b'"):
        ctx.update("b", 2)
    assert ctx.to_dict() == {"a": 1}


def test_remove_deletes_and_returns_the_value() -> None:
    ctx = Context({"a": 1, "b": 2})
    assert ctx.remove("a") == 1
    assert ctx.to_dict() == {"b": 2}
    with pytest.raises(KeyError, match="'a'"):
        ctx.remove("a")


def test_to_dict_is_a_deep_copy() -> None:
    ctx = Context({"nested": {"list": [1, 2]}})
    out = ctx.to_dict()
    out["nested"]["list"].append(3)
    out["new"] = True
    assert ctx.to_dict() == {"nested": {"list": [1, 2]}}


def test_to_json_and_from_json_round_trip() -> None:
    ctx = Context({"s": "é", "n": 1, "f": 1.5, "b": False, "none": None, "l": [1, {"x": 2}]})
    text = ctx.to_json()
    assert json.loads(text) == ctx.to_dict()
    back = Context.from_json(text)
    assert isinstance(back, Context)
    assert back == ctx
    assert Context.from_json(text.encode("utf-8")) == ctx


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '"a string"', "3"])
def test_from_json_rejects_anything_but_a_json_object(text: str) -> None:
    with pytest.raises(ValueError, match="from_json"):
        Context.from_json(text)


def test_tuples_are_stored_as_lists() -> None:
    ctx = Context({"t": (1, 2)})
    assert ctx.get("t") == [1, 2]


def test_update_from_dict_upserts_every_item() -> None:
    ctx = Context({"a": 1, "b": 2})
    ctx.update_from_dict({"b": 20, "c": 30})
    assert ctx.to_dict() == {"a": 1, "b": 20, "c": 30}


def test_item_access_get_set_del() -> None:
    ctx = Context()
    ctx["a"] = 1
    assert ctx["a"] == 1
    del ctx["a"]
    assert "a" not in ctx
    with pytest.raises(KeyError):
        _ = ctx["a"]
    with pytest.raises(KeyError):
        del ctx["a"]


def test_contains_len_and_iteration() -> None:
    ctx = Context({"a": 1, "b": 2})
    assert "a" in ctx
    assert "z" not in ctx
    assert len(ctx) == 2
    assert list(ctx) == ["a", "b"]
    assert dict(ctx.items()) == {"a": 1, "b": 2}
    assert len(Context()) == 0


def test_equality() -> None:
    assert Context({"a": 1, "b": 2}) == Context({"b": 2, "a": 1})
    assert Context({"a": 1}) != Context({"a": 2})
    assert Context({"a": 1}) == {"a": 1}
    assert Context({"a": 1}) != {"a": 1, "b": 2}
    assert Context() != "not a mapping"


def test_context_is_not_hashable() -> None:
    with pytest.raises(TypeError):
        hash(Context())


def test_non_string_key_is_refused() -> None:
    ctx = Context()
    with pytest.raises(TypeError, match="1"):
        ctx.set(1, "x")  # type: ignore[arg-type]
    assert len(ctx) == 0


# -- values JSON cannot hold ----------------------------------------------------


class Thing:
    pass


BAD_VALUES = [
    pytest.param(Thing(), id="object"),
    pytest.param({1, 2}, id="set"),
    pytest.param(b"bytes", id="bytes"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("inf"), id="inf"),
    pytest.param(float("-inf"), id="-inf"),
    pytest.param({1: "non-str key"}, id="non-str-dict-key"),
    pytest.param([1, [2, {3, 4}]], id="set-nested-in-lists"),
    pytest.param({"x": {"y": b"bytes"}}, id="bytes-nested-in-dicts"),
    pytest.param([{"ok": float("nan")}], id="nan-in-dict-in-list"),
    pytest.param({"x": {2: "non-str key nested"}}, id="nested-non-str-key"),
]


@pytest.mark.parametrize("value", BAD_VALUES)
def test_set_of_a_non_json_value_raises_type_error_naming_the_key(value: object) -> None:
    ctx = Context({"keep": 1})
    with pytest.raises(TypeError, match="the_key"):
        ctx.set("the_key", value)
    assert ctx.to_dict() == {"keep": 1}


@pytest.mark.parametrize("value", BAD_VALUES)
def test_item_assignment_of_a_non_json_value_stores_nothing(value: object) -> None:
    ctx = Context({"keep": 1})
    with pytest.raises(TypeError, match="the_key"):
        ctx["the_key"] = value
    assert "the_key" not in ctx
    assert ctx.to_dict() == {"keep": 1}


@pytest.mark.parametrize("value", BAD_VALUES)
def test_insert_of_a_non_json_value_stores_nothing(value: object) -> None:
    ctx = Context()
    with pytest.raises(TypeError, match="the_key"):
        ctx.insert("the_key", value)
    assert "the_key" not in ctx


@pytest.mark.parametrize("value", BAD_VALUES)
def test_update_with_a_non_json_value_keeps_the_old_value(value: object) -> None:
    ctx = Context({"the_key": "old"})
    with pytest.raises(TypeError, match="the_key"):
        ctx.update("the_key", value)
    assert ctx.get("the_key") == "old"


@pytest.mark.parametrize("value", BAD_VALUES)
def test_constructor_with_a_non_json_value_names_the_key(value: object) -> None:
    with pytest.raises(TypeError, match="the_key"):
        Context({"good": 1, "the_key": value})


def test_update_from_dict_with_one_bad_value_stores_nothing() -> None:
    ctx = Context({"a": 1})
    with pytest.raises(TypeError, match="bad"):
        ctx.update_from_dict({"a": 100, "b": 2, "bad": {1, 2}, "c": 3})
    assert ctx.to_dict() == {"a": 1}


def test_update_from_dict_with_a_non_string_key_stores_nothing() -> None:
    ctx = Context({"a": 1})
    with pytest.raises(TypeError):
        ctx.update_from_dict({"b": 2, 3: "three"})
    assert ctx.to_dict() == {"a": 1}


def test_self_referencing_value_raises_type_error_naming_the_key() -> None:
    loop: list[object] = []
    loop.append(loop)
    ctx = Context()
    with pytest.raises(TypeError, match="the_key"):
        ctx.set("the_key", loop)
    assert "the_key" not in ctx


# -- context hash ---------------------------------------------------------------


def test_hash_is_sha256_of_canonical_json() -> None:
    expected = canonical_sha256({"a": 1, "b": 2})
    # Spelled out too, so the test does not depend on json.dumps's argument handling alone.
    assert expected == hashlib.sha256(b'{"a":1,"b":2}').hexdigest()
    assert Context({"a": 1, "b": 2}).hash() == expected
    assert context_hash({"b": 2, "a": 1}) == expected


def test_hash_ignores_key_order_also_in_nested_dicts() -> None:
    one = Context({"a": 1, "n": {"x": 1, "y": [1, {"p": 1, "q": 2}]}})
    two = Context({"n": {"y": [1, {"q": 2, "p": 1}], "x": 1}, "a": 1})
    assert one.hash() == two.hash()
    assert one.hash() == canonical_sha256(one.to_dict())


def test_hash_differs_for_different_contents() -> None:
    assert Context({"a": 1}).hash() != Context({"a": 2}).hash()
    assert Context({"a": [1, 2]}).hash() != Context({"a": [2, 1]}).hash()


def test_fire_without_context_hashes_like_an_empty_dict() -> None:
    empty = canonical_sha256({})
    assert context_hash(None) == empty
    assert context_hash({}) == empty
    assert Context().hash() == empty
    result = TriggerResult.fire()
    assert result.context is None
    assert context_hash(result.context) == empty


@pytest.mark.slow  # starts Python processes
def test_hash_is_stable_across_processes() -> None:
    # Each process inserts the keys in an order that depends on its hash seed.
    script = (
        "from cloaca_celery import Context\n"
        "keys = sorted(['alpha', 'beta', 'gamma', 'delta', 'epsilon'], key=hash)\n"
        "print(Context({k: {'len': len(k), 'tags': ['x', k]} for k in keys}).hash())\n"
    )
    expected = canonical_sha256(
        {k: {"len": len(k), "tags": ["x", k]} for k in ("alpha", "beta", "gamma", "delta", "epsilon")}
    )
    hashes = []
    for seed in ("1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
            capture_output=True, text=True, timeout=60, check=True,
        )
        hashes.append(done.stdout.strip())
    assert hashes == [expected, expected]
