"""What a process has declared, by name: the base of the trigger, workflow and step registries.

Decorators and builders write to a process-wide registry when a module is
imported; ``install(app)``, the poller and the CLI read from it. Tests take
a :meth:`Registry.snapshot` and :meth:`Registry.restore` it afterwards
(``cloaca_celery.testing.isolated_registries``), never the private dicts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Items by name, thread-safe; ``version`` changes with every change."""

    def __init__(self) -> None:
        self._items: dict[str, T] = {}
        self._lock = threading.RLock()
        self._version = 0

    @property
    def version(self) -> int:
        """A number that changes whenever the registry does (for caches of what is worked out from it)."""
        return self._version

    def _put(self, name: str, item: T) -> None:
        with self._lock:
            self._items[name] = item
            self._version += 1

    def _find(self, name: str) -> T | None:
        return self._items.get(name)

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[T]:
        """Every item, by name."""
        return [self._items[name] for name in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self.items())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._version += 1

    def snapshot(self) -> Any:
        """What :meth:`restore` needs to bring the registry back to this moment."""
        with self._lock:
            return dict(self._items)

    def restore(self, snapshot: Any) -> None:
        with self._lock:
            self._items = dict(snapshot)
            self._version += 1
