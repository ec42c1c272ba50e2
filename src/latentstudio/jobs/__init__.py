"""Jobs: the SQLite job store, the queue, the worker that owns the models, and events.

Handlers use :class:`JobService` only; nothing here imports FastAPI. A job's ControlNet units take the
choices :data:`MAX_UNITS`, :class:`ControlMode`, :class:`ControlResize` and :class:`HiresOption` name.
"""

from latentstudio.control.units import MAX_UNITS, ControlMode, ControlResize, HiresOption
from latentstudio.jobs.events import EventBus, Subscription
from latentstudio.jobs.model import (
    AnySpec,
    EventType,
    ExtrasSpec,
    GenerationFacts,
    ImageRef,
    JobError,
    JobEvent,
    JobKind,
    JobNotFoundError,
    JobRecord,
    JobSpec,
    JobStatus,
    NoCheckpointError,
    Progress,
    QueueFullError,
)
from latentstudio.jobs.service import RESTART_ERROR, JobService

__all__ = [
    "MAX_UNITS",
    "RESTART_ERROR",
    "AnySpec",
    "ControlMode",
    "ControlResize",
    "EventBus",
    "EventType",
    "ExtrasSpec",
    "GenerationFacts",
    "HiresOption",
    "ImageRef",
    "JobError",
    "JobEvent",
    "JobKind",
    "JobNotFoundError",
    "JobRecord",
    "JobService",
    "JobSpec",
    "JobStatus",
    "NoCheckpointError",
    "Progress",
    "QueueFullError",
    "Subscription",
]
