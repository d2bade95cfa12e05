"""``TriggerResult``: what a trigger function returns, skip or fire."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .context import Context


class TriggerResult:
    """The outcome of one poll: ``skip()`` or ``fire(context)``."""

    __slots__ = ("_context", "_fire")

    def __init__(self, fire: bool, context: Context | None = None) -> None:
        self._fire = fire
        self._context = context

    @classmethod
    def skip(cls) -> TriggerResult:
        """The condition is not met; nothing runs and no history is written."""
        return cls(False)

    @classmethod
    def fire(cls, context: Context | Mapping[str, Any] | None = None) -> TriggerResult:
        """The condition is met: run the workflow with ``context`` (a Context or dict)."""
        if context is None or isinstance(context, Context):
            return cls(True, context)
        if isinstance(context, Mapping):
            return cls(True, Context(context))
        raise TypeError(
            f"TriggerResult.fire() takes a Context, a dict or None, not {type(context).__name__}"
        )

    def is_skip_result(self) -> bool:
        return not self._fire

    def is_fire_result(self) -> bool:
        return self._fire

    @property
    def context(self) -> Context | None:
        """The fired context (``None`` for a skip or a fire without context)."""
        return self._context

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TriggerResult):
            return NotImplemented
        return self._fire == other._fire and self._context == other._context

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if not self._fire:
            return "TriggerResult.skip()"
        return f"TriggerResult.fire({self._context!r})"
