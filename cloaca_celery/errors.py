"""The exceptions cloaca-celery raises.

Every message names the trigger, workflow or setting at fault and says what to
do about it. Built-in types are used where the documented contract asks for
them (``ValueError`` at decoration, ``TypeError`` for non-JSON values,
``KeyError`` for unknown names); the classes here subclass them so that both
``except ValueError`` and ``except CloacaError`` work.
"""

from __future__ import annotations


class CloacaError(Exception):
    """Base class of every error raised by cloaca-celery."""


class ConfigurationError(CloacaError, ValueError):
    """A trigger, workflow or setting is declared wrongly."""


class WorkflowDefinitionError(ConfigurationError):
    """A workflow cannot be built: a cycle, a missing dependency, a bad task."""


class UnknownWorkflowError(CloacaError, KeyError):
    """A trigger names a workflow that nobody registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownTriggerError(CloacaError, KeyError):
    """A trigger name that no registered trigger or schedule row has."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ContextError(CloacaError, TypeError):
    """A context value that JSON cannot hold, or a context that is too large."""
