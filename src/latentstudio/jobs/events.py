"""Job events from the worker thread to any number of listeners: sync callbacks and asyncio subscribers.

Publishing never blocks the worker: async subscribers get events through their loop's thread-safe
callback into a bounded queue; a slow subscriber loses step events first, never a terminal one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from latentstudio.jobs.model import EventType, JobEvent

log = logging.getLogger(__name__)
Listener = Callable[[JobEvent], None]


class Subscription:
    """An async stream of events; close it (or use ``async with``) to stop receiving."""

    def __init__(self, bus: EventBus, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self._bus = bus
        self._loop = loop
        self._queue: asyncio.Queue[JobEvent] = asyncio.Queue(maxsize=size)
        self.dropped = 0

    def _offer(self, event: JobEvent) -> None:
        """Runs on the subscriber's loop: enqueue, dropping the oldest event when full."""
        if self._queue.full():
            if event.type is EventType.STEP:
                self.dropped += 1
                return
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)

    def deliver(self, event: JobEvent) -> None:
        """Called from any thread."""
        try:
            self._loop.call_soon_threadsafe(self._offer, event)
        except RuntimeError:  # the loop is closed: this subscriber is gone
            self.close()

    async def get(self, timeout: float | None = None) -> JobEvent | None:
        """The next event, or None after ``timeout`` seconds without one."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    def drain(self) -> list[JobEvent]:
        """The events already delivered, without waiting (call on the subscriber's loop)."""
        events = []
        while not self._queue.empty():
            events.append(self._queue.get_nowait())
        return events

    def close(self) -> None:
        self._bus.unsubscribe(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Fan-out of :class:`JobEvent` to callbacks (run in the publishing thread) and subscriptions."""

    def __init__(self, queue_size: int = 256) -> None:
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._subscriptions: list[Subscription] = []

    def publish(self, event: JobEvent) -> None:
        """Deliver to every listener and subscriber; a failing listener is logged and skipped."""
        with self._lock:
            listeners = list(self._listeners)
            subscriptions = list(self._subscriptions)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the worker
                log.exception("event listener failed on %s", event.type)
        for subscription in subscriptions:
            subscription.deliver(event)

    @property
    def has_subscribers(self) -> bool:
        """Whether anyone streams events (previews are only rendered then)."""
        with self._lock:
            return bool(self._subscriptions)

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every event, in the publishing thread; returns the remover.

        Listeners must be quick and must not call back into the service.
        """
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    def subscribe(self) -> Subscription:
        """A new async subscription; call from inside a running event loop."""
        subscription = Subscription(self, asyncio.get_running_loop(), self.queue_size)
        with self._lock:
            self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._subscriptions.remove(subscription)
