"""Issue 7, case 7: properties of context hashing and duration parsing (hypothesis).

The hash decides which fires are "the same work" (DESIGN 2.3), so it must not
depend on key order, on the process, or on Python's hash seed; durations are
what every interval and limit is written in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloaca_celery import Context
from cloaca_celery.context import canonical_json, context_hash
from cloaca_celery.durations import parse_duration

REPO = Path(__file__).resolve().parents[2]
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

keys = st.text(min_size=0, max_size=12)
scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)
contexts = st.dictionaries(keys, json_values, max_size=6)


def _reordered(value: Any, rng: Any) -> Any:
    """The same JSON value with every object's keys in another order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _reordered(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_reordered(v, rng) for v in value]
    return value


@PROPERTY
@given(context=contexts, seed=st.randoms(use_true_random=False))
def test_the_hash_does_not_depend_on_key_order(context: dict[str, Any], seed: Any) -> None:
    shuffled = _reordered(context, seed)
    assert context_hash(shuffled) == context_hash(context)
    assert context_hash(Context(shuffled).to_dict()) == context_hash(context)


@PROPERTY
@given(a=contexts, b=contexts)
def test_different_json_gets_a_different_hash(a: dict[str, Any], b: dict[str, Any]) -> None:
    same_json = json.loads(canonical_json(a)) == json.loads(canonical_json(b))
    assert (context_hash(a) == context_hash(b)) == same_json


@PROPERTY
@given(context=contexts)
def test_the_hash_survives_a_json_round_trip(context: dict[str, Any]) -> None:
    """What the worker receives (JSON) hashes like what the trigger returned."""
    assert context_hash(json.loads(json.dumps(context))) == context_hash(context)


@settings(max_examples=1, deadline=None)
@given(batch=st.lists(contexts, min_size=50, max_size=50))
def test_the_hash_is_the_same_in_another_process_with_another_hash_seed(batch: list[dict[str, Any]]) -> None:
    here = [context_hash(c) for c in batch]
    script = (
        "import json, sys\n"
        "from cloaca_celery.context import context_hash\n"
        "print(json.dumps([context_hash(c) for c in json.load(sys.stdin)]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(batch), env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout) == here


UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@PROPERTY
@given(n=st.integers(min_value=1, max_value=10**6), unit=st.sampled_from(sorted(UNITS)))
def test_a_number_and_a_unit_mean_that_many_units(n: int, unit: str) -> None:
    assert parse_duration(f"{n}{unit}", "poll_interval") == pytest.approx(n * UNITS[unit])


@PROPERTY
@given(seconds=st.floats(min_value=1e-3, max_value=1e7, allow_nan=False) | st.integers(1, 10**7))
def test_a_bare_number_is_seconds(seconds: float) -> None:
    assert parse_duration(seconds, "poll_interval") == pytest.approx(float(seconds))


@PROPERTY
@given(text=st.text(max_size=12))
def test_any_other_text_is_refused_naming_it_or_gives_a_positive_duration(text: str) -> None:
    try:
        value = parse_duration(text, "poll_interval")
    except ValueError as exc:
        assert "poll_interval" in str(exc)
    else:
        assert value > 0


@PROPERTY
@given(value=st.integers(max_value=0) | st.floats(max_value=0.0, allow_nan=False))
def test_zero_and_negative_durations_are_refused(value: float) -> None:
    with pytest.raises(ValueError, match="poll_interval"):
        parse_duration(value, "poll_interval")
