"""The worker: the one thread per device that owns the models, runs jobs in order and writes their images.

The thread claims queued jobs (queued → running) and hands each to its :class:`JobRunner`
(:mod:`latentstudio.jobs.running`), whose one store transaction is a job's commit point. A crash anywhere
before that transaction leaves the job ``running`` in the store, which the next start marks failed and
cleans up. Other threads see and steer the running job through :class:`LiveJob`
(:mod:`latentstudio.jobs.live`).

Model maintenance that other threads ask for (unload, rescans: :meth:`Worker.call`) is a command the worker
runs between jobs, so nothing but this thread ever touches loaded weights or changes the catalog under a job.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from latentstudio.jobs.events import EventBus
from latentstudio.jobs.live import LiveJob
from latentstudio.jobs.model import Progress
from latentstudio.jobs.running import JobRunner
from latentstudio.jobs.store import JobStore
from latentstudio.models.files import ModelFileError
from latentstudio.models.manager import ModelManager

log = logging.getLogger(__name__)
T = TypeVar("T")


class Worker:
    """Runs queued jobs from the store one at a time on ``manager``'s device."""

    def __init__(
        self,
        store: JobStore,
        manager: ModelManager,
        events: EventBus,
        images_root: Path,
        *,
        preview_every: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.manager = manager
        self.events = events
        self.clock = clock
        self.ready = threading.Event()
        self.ready_error: str | None = "starting"
        self.live = LiveJob(clock)
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._commands: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._commands_lock = threading.Lock()
        self._accepting = False  # commands are queued for the thread only while it runs its loop
        self.runner = JobRunner(
            store,
            manager,
            events,
            images_root,
            live=self.live,
            stopping=self._stopping,
            preview_every=preview_every,
            clock=clock,
        )
        # the job service reads these listings to check upscaler and face restorer names at submission
        self.upscalers = self.runner.upscalers
        self.faces = self.runner.faces
        self.controls = self.runner.controls
        self._thread = threading.Thread(target=self._loop, name=f"latentstudio-worker-{manager.device}")

    # -- control from other threads ------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread; commands from :meth:`call` are queued for it from now on."""
        with self._commands_lock:
            self._accepting = True
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The worker thread runs."""
        return self._thread.is_alive()

    @property
    def durations(self) -> list[float]:
        """Recent job wall times in seconds, newest last (for Retry-After)."""
        return self.runner.durations

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current step: a running job goes back to the queue, nothing else is claimed."""
        self._stopping.set()
        self.live.request(None, stop=True)
        self._wakeup.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wake(self) -> None:
        """A job was queued."""
        self._wakeup.set()

    def call(self, command: Callable[[], T]) -> Future[T]:
        """Run ``command`` on the worker thread before it claims its next job (after the running one, if
        any; at once when idle); the future gets its result or exception. Without a worker thread (not
        started, or stopped) nothing else touches the models, and the command runs here at once."""
        future: Future[T] = Future()
        with self._commands_lock:
            if self._accepting:
                self._commands.append((command, future))
                self._wakeup.set()
                return future
        _complete(future, command)
        return future

    def request(
        self, job_id: str | None, *, stop: bool = False, cancel: bool = False, skip: bool = False
    ) -> str | None:
        """Ask the running job (``job_id`` or whichever runs, when None) to stop/cancel/skip; returns its
        id, or None when that job is not running."""
        return self.live.request(job_id, stop=stop, cancel=cancel, skip=skip)

    def steps(self, job_id: str) -> tuple[int, int]:
        """``(step, total)`` of ``job_id`` if it is running, else ``(0, 0)`` (no preview rendered)."""
        return self.live.steps(job_id)

    def progress(self, queued: int) -> Progress:
        """A snapshot of the running job (with a preview image of its newest latent)."""
        return self.live.progress(queued)

    # -- the thread ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        """Warm up, then until stopped: queued commands, then the next queued job (or a nap until woken)."""
        try:
            self._warm_up()
            # The libraries and the default model are loaded for good: the collector's full passes skip them
            # from now on. Otherwise each pass walks ~650 000 objects, 0.75 s on a 2-core machine during
            # which no request is answered (bench numbers in the commit; tests/test_concurrency.py).
            gc.freeze()
            while not self._stopping.is_set():
                self._run_commands()
                record = self.store.claim_next(self.clock())
                if record is None:
                    self._wakeup.wait(timeout=1.0)
                    self._wakeup.clear()
                    continue
                try:
                    self.runner.execute(record)
                except Exception:  # the store failed (disk full, I/O error): keep serving, retry later
                    log.exception("worker: job %s could not be recorded", record.id)
                    self._stopping.wait(1.0)
        finally:
            gc.unfreeze()  # what this server kept alive may be collected again once it stops
            with self._commands_lock:
                self._accepting = False  # from now on callers run their commands themselves
            self._run_commands()  # and none that was queued is left without an answer

    def _run_commands(self) -> None:
        """Every queued command, in order."""
        while True:
            with self._commands_lock:
                if not self._commands:
                    return
                command, future = self._commands.popleft()
            _complete(future, command)

    def _warm_up(self) -> None:
        """Load the default checkpoint so the first job does not pay for it; sets :attr:`ready`. A file
        that fails to load is logged and skipped (the manager remembers it): the next one becomes the
        default, so one bad file never keeps the server from being ready."""
        for _ in range(len(self.manager.checkpoints()) + 1):
            try:
                self.manager.load(None)
            except ModelFileError as e:
                log.warning("checkpoint skipped: %s", e)
                continue
            except Exception as e:  # no usable checkpoint: the server still answers, /readyz says why
                first_line = str(e).splitlines()[0] if str(e).strip() else repr(e)
                self.ready_error = f"default checkpoint not loaded: {first_line}"
                log.warning("%s", self.ready_error)
                return
            self.ready_error = None
            self.ready.set()
            return
        self.ready_error = "default checkpoint not loaded: every checkpoint failed to load"


def _complete(future: Future[T], command: Callable[[], T]) -> None:
    """Run ``command`` into ``future`` (unless the caller gave up on it already)."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = command()
    except BaseException as e:  # the caller gets it; the worker goes on after an Exception
        future.set_exception(e)
        if not isinstance(e, Exception):
            raise
        return
    future.set_result(result)
