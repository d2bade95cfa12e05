"""cloaca-celery: event-driven workflow triggers for Celery.

``import cloaca_celery as cloaca`` gives the cloaca ``@trigger`` API; the
pages in ``docs/`` give the contract of each name.
"""

from .context import Context, context_hash
from .durations import parse_duration
from .errors import (
    CloacaError,
    ConfigurationError,
    ContextError,
    UnknownTriggerError,
    UnknownWorkflowError,
    WorkflowDefinitionError,
)
from .installation import install
from .results import TriggerResult
from .runner import DefaultRunner
from .steps import WorkflowStep, task
from .triggers import trigger
from .workflows import Workflow, WorkflowBuilder, register_workflow

__all__ = [
    "CloacaError",
    "ConfigurationError",
    "Context",
    "ContextError",
    "DefaultRunner",
    "TriggerResult",
    "UnknownTriggerError",
    "UnknownWorkflowError",
    "Workflow",
    "WorkflowBuilder",
    "WorkflowDefinitionError",
    "WorkflowStep",
    "context_hash",
    "install",
    "parse_duration",
    "register_workflow",
    "task",
    "trigger",
]

__version__ = "0.1.0"
