"""``Context``: the JSON-only mapping passed from a trigger to its workflow.

Values are checked when they are put in, so an unserialisable value fails at
the line that adds it, naming its key, not later inside a Celery publish.
The context hash is SHA-256 over canonical JSON (sorted keys, no whitespace),
so equal contents hash equally in every process whatever their key order.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from .errors import ContextError

JSONValue = Any
"""A value JSON can hold: ``None``, bool, int, float, str, list, dict."""

_MISSING = object()


def check_json_value(value: Any, where: str, _path: frozenset[int] = frozenset()) -> JSONValue:
    """Return ``value`` as plain JSON data (tuples become lists).

    Raises :class:`~cloaca_celery.errors.ContextError` (a ``TypeError``)
    naming ``where`` when something inside cannot be represented in JSON,
    including a list or dict that contains itself.
    """
    if isinstance(value, (Mapping, list, tuple)):
        if id(value) in _path:
            raise ContextError(f"{where}: the value contains itself; JSON cannot hold a cycle")
        _path = _path | {id(value)}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ContextError(
                f"{where}: {value!r} is not valid JSON; use None or a string instead"
            )
        return value
    if isinstance(value, Mapping):
        out: dict[str, JSONValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ContextError(
                    f"{where}: dictionary key {key!r} is a {type(key).__name__}; "
                    "JSON object keys must be strings"
                )
            out[key] = check_json_value(item, f"{where}[{key!r}]", _path)
        return out
    if isinstance(value, (list, tuple)):
        return [check_json_value(item, f"{where}[{i}]", _path) for i, item in enumerate(value)]
    raise ContextError(
        f"{where}: a value of type {type(value).__name__} cannot be stored as JSON; "
        "convert it to a str, number, bool, None, list or dict first"
    )


def canonical_json(data: Mapping[str, JSONValue]) -> str:
    """Serialise ``data`` with sorted keys and no whitespace."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def context_hash(data: Mapping[str, JSONValue] | None) -> str:
    """SHA-256 (hex) of the canonical JSON of ``data``; ``None`` hashes as ``{}``."""
    return hashlib.sha256(canonical_json(data or {}).encode("utf-8")).hexdigest()


class Context(MutableMapping[str, JSONValue]):
    """A JSON-only mapping of string keys to JSON values.

    ``Context(data=None)`` copies ``data`` (a mapping or another ``Context``).
    Every write checks its value: a set, bytes, an object or NaN raises
    ``TypeError`` naming the key, and nothing is stored.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, JSONValue] = {}
        if data is not None:
            if not isinstance(data, Mapping):
                raise ContextError(
                    f"Context() takes a dict or a Context, not {type(data).__name__}"
                )
            self.update_from_dict(data)

    # -- cloaca API --------------------------------------------------------

    def get(self, key: str, default: Any = None) -> JSONValue:
        """Return the value of ``key``, or ``default`` when it is absent."""
        return self._data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Insert or replace ``key``."""
        self._data[self._check_key(key)] = check_json_value(value, f"context key {key!r}")

    def insert(self, key: str, value: Any) -> None:
        """Add ``key``; raises ``ValueError`` if it is already present."""
        key = self._check_key(key)
        if key in self._data:
            raise ValueError(
                f"context key {key!r} already exists; use set() to replace it "
                "or update() to change it"
            )
        self._data[key] = check_json_value(value, f"context key {key!r}")

    def update(self, key: str, value: Any, /) -> None:  # type: ignore[override]
        """Replace the value of an existing ``key``; ``KeyError`` if it is missing."""
        if key not in self._data:
            raise KeyError(
                f"context key {key!r} does not exist; use set() or insert() to add it"
            )
        self._data[key] = check_json_value(value, f"context key {key!r}")

    def remove(self, key: str) -> JSONValue:
        """Delete ``key`` and return its value; ``KeyError`` if it is missing."""
        try:
            return self._data.pop(key)
        except KeyError:
            raise KeyError(f"context key {key!r} does not exist") from None

    def update_from_dict(self, data: Mapping[str, Any]) -> None:
        """Upsert every item of ``data``; all values are checked before any is stored."""
        checked = {self._check_key(k): check_json_value(v, f"context key {k!r}") for k, v in data.items()}
        self._data.update(checked)

    def to_dict(self) -> dict[str, JSONValue]:
        """A deep copy of the contents as plain JSON data."""
        result: dict[str, JSONValue] = json.loads(self.to_json())
        return result

    def to_json(self) -> str:
        """The contents as a JSON string (keys in insertion order)."""
        return json.dumps(self._data, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Context:
        """Build a context from a JSON object string."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"Context.from_json: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(
                f"Context.from_json: expected a JSON object, got {type(data).__name__}"
            )
        return cls(data)

    def hash(self) -> str:
        """The context hash used for deduplication (see :func:`context_hash`)."""
        return context_hash(self._data)

    # -- mapping protocol --------------------------------------------------

    def __getitem__(self, key: str) -> JSONValue:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Context):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Context({self._data!r})"

    @staticmethod
    def _check_key(key: object) -> str:
        if not isinstance(key, str):
            raise ContextError(
                f"context key {key!r} is a {type(key).__name__}; context keys must be strings"
            )
        return key


def merge_contexts(value: Any, where: str) -> dict[str, Any]:
    """Turn a step's input into one context dict.

    A dict or ``Context`` is taken as it is; a list (the results of parallel
    branches) is merged in order, later branches winning on equal keys;
    ``None`` is an empty context.
    """
    if value is None:
        return {}
    if isinstance(value, Context):
        return value.to_dict()
    if isinstance(value, Mapping):
        checked: dict[str, Any] = check_json_value(value, f"{where}: context")
        return checked
    if isinstance(value, (list, tuple)):
        merged: dict[str, Any] = {}
        for item in value:
            merged.update(merge_contexts(item, where))
        return merged
    raise TypeError(
        f"{where}: expected a context (dict), got {type(value).__name__}; a cloaca "
        "@task receives the context returned by the step before it"
    )
