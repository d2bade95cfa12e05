"""Issue 7, case 7: properties of context hashing and duration parsing (hypothesis).

The hash decides which fires are "the same work" (DESIGN 2.3): it must not
depend on key order (nested objects too), on the process or on Python's hash
seed, and two contexts must hash alike exactly when they hold the same JSON.
Durations are what every interval and limit is written in: each valid form
means what it says, and anything else is a ``ValueError`` naming the input,
never a zero or negative duration.

Every property runs ``max_examples=200`` generated examples (``deadline=None``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cloaca_celery import Context, TriggerResult
from cloaca_celery.context import canonical_json, context_hash
from cloaca_celery.durations import parse_duration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = 200
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- contexts ---------------------------------------------------------------------------------

keys = st.text(max_size=8)
scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=16,
)
contexts = st.dictionaries(keys, json_values, max_size=6)


def same_json(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same JSON value, worked out without ``canonical_json``.

    Stricter than ``==``: ``True`` is not ``1``, ``1`` is not ``1.0`` and
    ``-0.0`` is not ``0.0`` (JSON writes each differently); key order does
    not matter.
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return bool(a == b)


def reordered(value: Any, rng: random.Random, tuples: bool = False) -> Any:
    """The same JSON value with every object's keys shuffled (and lists as tuples if asked)."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: reordered(v, rng, tuples) for k, v in items}
    if isinstance(value, list):
        items = [reordered(v, rng, tuples) for v in value]
        return tuple(items) if tuples and rng.random() < 0.5 else items
    return value


def leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every value inside ``value`` (itself excluded)."""
    found: list[tuple[Any, ...]] = []
    children: Any = ()
    if isinstance(value, dict):
        children = value.items()
    elif isinstance(value, list):
        children = enumerate(value)
    for key, child in children:
        found.append((*path, key))
        found.extend(leaf_paths(child, (*path, key)))
    return found


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


@PROPERTY
@given(context=contexts, rng=st.randoms(use_true_random=False))
def test_the_hash_does_not_depend_on_key_order(context: dict[str, Any], rng: random.Random) -> None:
    shuffled = reordered(context, rng)
    assert context_hash(shuffled) == context_hash(context)
    assert canonical_json(shuffled) == canonical_json(context)
    assert Context(shuffled).hash() == context_hash(context)
    assert TriggerResult.fire(shuffled).context is not None
    assert TriggerResult.fire(shuffled).context.hash() == context_hash(context)  # type: ignore[union-attr]


@PROPERTY
@given(context=contexts, rng=st.randoms(use_true_random=False))
def test_equal_contents_hash_equal_whatever_their_python_form(
    context: dict[str, Any], rng: random.Random,
) -> None:
    """Tuples for lists, a Context for a dict, a JSON round trip: the same JSON, the same hash."""
    as_python = reordered(context, rng, tuples=True)
    through_json = json.loads(json.dumps(context))
    digest = context_hash(context)
    assert Context(as_python).hash() == digest
    assert Context(context).to_dict() == through_json
    assert context_hash(through_json) == digest
    assert Context.from_json(Context(context).to_json()).hash() == digest
    assert digest == hashlib.sha256(
        json.dumps(context, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()


@PROPERTY
@given(a=contexts, b=contexts)
def test_two_contexts_hash_alike_exactly_when_they_hold_the_same_json(
    a: dict[str, Any], b: dict[str, Any],
) -> None:
    assert (context_hash(a) == context_hash(b)) == same_json(a, b)


@PROPERTY
@given(context=contexts.filter(bool), data=st.data())
def test_changing_any_one_value_changes_the_hash(context: dict[str, Any], data: st.DataObject) -> None:
    """Near misses: one value anywhere replaced by another (``1`` by ``1.0``, ``"a"`` by ``"a "``...)."""
    path = data.draw(st.sampled_from(leaf_paths(context)), label="path")
    old = context
    for key in path:
        old = old[key]
    near: st.SearchStrategy[Any] = st.sampled_from([1, 1.0, True, 0, -0.0, 0.0, False, None, "", "1", [], {}])
    new = data.draw(near | json_values, label="new")
    assume(not same_json(old, new))
    changed = replaced(context, path, new)
    assert not same_json(changed, context)
    assert context_hash(changed) != context_hash(context)


@PROPERTY
@given(context=contexts, key=keys)
def test_adding_or_removing_a_key_changes_the_hash(context: dict[str, Any], key: str) -> None:
    other = dict(context)
    if key in other:
        del other[key]
    else:
        other[key] = None
    assert context_hash(other) != context_hash(context)


def test_the_hash_is_the_same_in_other_processes_with_other_hash_seeds() -> None:
    batch: list[dict[str, Any]] = []

    @PROPERTY
    @given(context=contexts)
    def collect(context: dict[str, Any]) -> None:
        batch.append(context)

    collect()
    assert len(batch) >= EXAMPLES // 2, len(batch)
    here = [context_hash(c) for c in batch]
    script = (
        "import json, sys\n"
        "from cloaca_celery import Context\n"
        "from cloaca_celery.context import context_hash\n"
        "batch = json.load(sys.stdin)\n"
        "print(json.dumps([[context_hash(c), Context(c).hash()] for c in batch]))\n"
    )
    for seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-c", script], input=json.dumps(batch), env=env,
                              capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(done.stdout) == [[h, h] for h in here], f"PYTHONHASHSEED={seed}"


# -- durations --------------------------------------------------------------------------------

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
GRAMMAR = re.compile(r"[ \t\n\r\f\v]*([0-9]+(?:\.[0-9]+)?|\.[0-9]+)[ \t\n\r\f\v]*(ms|s|m|h|d)[ \t\n\r\f\v]*")
"""The documented string form, written out independently of durations.py."""

space = st.text(alphabet=" \t", max_size=2)
decimals = st.from_regex(r"[0-9]{1,6}(\.[0-9]{1,4})?|\.[0-9]{1,4}", fullmatch=True)


@PROPERTY
@given(n=st.integers(min_value=1, max_value=10**9), unit=st.sampled_from(sorted(UNITS)),
       before=space, between=space, after=space)
def test_a_count_and_a_unit_mean_that_many_units(n: int, unit: str, before: str, between: str,
                                                   after: str) -> None:
    assert parse_duration(f"{before}{n}{between}{unit}{after}", "poll_interval") == pytest.approx(
        n * UNITS[unit], rel=1e-12)


@PROPERTY
@given(number=decimals, unit=st.sampled_from(sorted(UNITS)))
def test_a_decimal_and_a_unit_mean_that_many_units_or_are_refused_as_zero(number: str, unit: str) -> None:
    text = f"{number}{unit}"
    expected = float(number) * UNITS[unit]
    if expected > 0:
        assert parse_duration(text, "poll_interval") == pytest.approx(expected, rel=1e-12)
    else:
        with pytest.raises(ValueError, match=re.escape(f"poll_interval: {text!r} must be greater than zero")):
            parse_duration(text, "poll_interval")


@PROPERTY
@given(seconds=st.floats(min_value=0.0, max_value=1e12, exclude_min=True) | st.integers(1, 10**15))
def test_a_positive_number_is_that_many_seconds(seconds: float) -> None:
    parsed = parse_duration(seconds, "poll_interval")
    assert isinstance(parsed, float) and parsed == float(seconds) and parsed > 0


@PROPERTY
@given(value=st.integers(max_value=0) | st.floats(max_value=0.0) | st.sampled_from(
    [math.inf, -math.inf, math.nan, 10**400, -(10**400), True, False]))
def test_zero_negative_infinite_and_bool_numbers_are_refused(value: float) -> None:
    with pytest.raises(ValueError, match=r"^poll_interval: ") as info:
        parse_duration(value, "poll_interval")
    assert type(info.value) is ValueError
    if not isinstance(value, int) or abs(value) < 10**300:
        assert repr(value) in str(info.value)


def _near_misses() -> st.SearchStrategy[str]:
    """Strings close to valid durations that are not."""
    number = st.integers(min_value=1, max_value=10**6).map(str)
    unit = st.sampled_from(sorted(UNITS))
    zero = st.sampled_from(["0", "00", "0.0", ".0", "0.000", "000.00"])
    other_unit = st.text(alphabet="abcdefghijklmnopqrstuvwxyzµ", min_size=1, max_size=6).filter(
        lambda u: u not in UNITS)
    return st.one_of(
        st.tuples(zero, unit).map("".join),                                   # zero
        st.tuples(st.sampled_from(["-", "+", "\u2212"]), number, unit).map("".join),  # signed
        st.tuples(number, other_unit).map(lambda t: f"{t[0]}{t[1]}"),         # unknown unit
        st.tuples(number, st.sampled_from(["", " ", "."])).map("".join),      # no unit
        unit,                                                                 # no number
        st.tuples(number, unit, number, unit).map("".join),                   # two durations
        st.tuples(number, st.sampled_from(["e3", "E-1", ",5", "_0", "."]), unit).map("".join),
        # non-ASCII digits: Arabic-Indic, fullwidth and Bengali five, Roman numeral five
        st.tuples(st.sampled_from(["\u0665", "\uff15", "\u09eb", "\u2164"]), unit).map("".join),
        st.tuples(st.sampled_from(["inf", "nan", "infinity", "0x10"]), unit).map("".join),
        st.tuples(st.integers(400, 600), unit).map(lambda t: "9" * t[0] + t[1]),  # overflows to inf
    )


@PROPERTY
@given(text=_near_misses())
def test_near_misses_are_refused_naming_the_input(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text, "poll_interval")
    assert type(info.value) is ValueError
    assert str(info.value).startswith(f"poll_interval: {text!r} ")


@PROPERTY
@given(text=st.text(max_size=16) | _near_misses())
def test_any_text_is_its_documented_value_or_refused_naming_it(text: str) -> None:
    match = GRAMMAR.fullmatch(text)
    expected = float(match.group(1)) * UNITS[match.group(2)] if match else None
    if expected is not None and 0 < expected < math.inf:
        parsed = parse_duration(text, "poll_interval")
        assert parsed == pytest.approx(expected, rel=1e-12) and parsed > 0
        return
    with pytest.raises(ValueError) as info:
        parse_duration(text, "poll_interval")
    assert str(info.value).startswith(f"poll_interval: {text!r} ")
