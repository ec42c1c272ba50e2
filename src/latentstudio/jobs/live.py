"""The running job's shared state: the worker thread writes it as a job runs (step, total, newest latent)
and other threads read it (progress, steps) or flag it (stop, cancel, skip), all under one lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from latentstudio.jobs.model import Progress
from latentstudio.models.families import Family
from latentstudio.pipeline.run import latent_preview


@dataclass
class Live:
    """Mutable state of the running job, guarded by :attr:`LiveJob.lock`."""

    job_id: str
    started: float
    step: int = 0
    total: int = 0
    latent: torch.Tensor | None = None
    family: Family = Family.SD1
    stop: bool = False
    cancel: bool = False
    skips: int = 0


class LiveJob:
    """The job the worker runs now (if any), shared between the worker thread and everyone else."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self._live: Live | None = None

    # -- the worker thread ------------------------------------------------------------------------------
    def begin(self, job_id: str, started: float) -> None:
        """``job_id`` runs from now on."""
        with self.lock:
            self._live = Live(job_id, started)

    def end(self) -> None:
        """No job runs any more."""
        with self.lock:
            self._live = None

    @contextmanager
    def locked(self) -> Iterator[Live | None]:
        """The running job's state (None when none runs), to read or change while the lock is held."""
        with self.lock:
            yield self._live

    def flag(self, name: str) -> bool:
        """Whether the running job's ``stop`` or ``cancel`` flag is set (False when none runs)."""
        with self.lock:
            return self._live is not None and bool(getattr(self._live, name))

    def take_skip(self) -> bool:
        """Consume one pending skip request of the running job; whether there was one."""
        with self.lock:
            if self._live is None or self._live.skips == 0:
                return False
            self._live.skips -= 1
            return True

    def counts(self) -> tuple[int, int]:
        """``(step, total)`` of the running job, ``(0, 0)`` when none runs."""
        with self.lock:
            return (self._live.step, self._live.total) if self._live else (0, 0)

    # -- other threads ----------------------------------------------------------------------------------
    def request(
        self, job_id: str | None, *, stop: bool = False, cancel: bool = False, skip: bool = False
    ) -> str | None:
        """Ask the running job (``job_id`` or whichever runs, when None) to stop/cancel/skip; returns its
        id, or None when that job is not running."""
        with self.lock:
            live = self._live
            if live is None or (job_id is not None and live.job_id != job_id):
                return None
            live.stop = live.stop or stop or cancel
            live.cancel = live.cancel or cancel
            live.skips += int(skip)
            return live.job_id

    def steps(self, job_id: str) -> tuple[int, int]:
        """``(step, total)`` of ``job_id`` if it is running, else ``(0, 0)`` (no preview rendered)."""
        with self.lock:
            live = self._live
            return (live.step, live.total) if live is not None and live.job_id == job_id else (0, 0)

    def progress(self, queued: int) -> Progress:
        """A snapshot of the running job (with a preview image of its newest latent)."""
        with self.lock:
            live = self._live
            if live is None:
                return Progress(None, queued=queued)
            latent, family = live.latent, live.family
            snapshot = Progress(live.job_id, live.step, live.total, self.clock() - live.started, None, queued)
        if latent is None:
            return snapshot
        return Progress(**{**snapshot.__dict__, "preview": latent_preview(latent, family)})
