"""Jobs: the SQLite job store, the queue, the worker that owns the models, and events.

Handlers use :class:`JobService` only; nothing here imports FastAPI.
"""

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
    "RESTART_ERROR",
    "AnySpec",
    "EventBus",
    "EventType",
    "ExtrasSpec",
    "GenerationFacts",
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
