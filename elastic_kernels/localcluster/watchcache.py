"""Watches and the bounded event window they resume from: the store's half of a watch.

Each stored resource type has a ``TypeState``: its objects, the last ``watch_window`` changes
(``StoredEvent``, shared by every watcher, with a cache of their serialised forms) and the open
``Watch`` objects. The store feeds each change to every watcher synchronously; a watcher filters
it by namespace, labels and fields the way the real watch cache does (an object that stops
matching is seen as DELETED) and queues it for its consumer, the API server's watch handler or an
in-process informer (the scheduler's, the kubelet's). A consumer that falls ``queue_limit`` events
behind is closed, as a real server ends a slow watcher; the client re-watches from its last
resourceVersion, or relists after 410 Gone once that version has left the window.

Used by ``store.py`` (which creates watches) and ``handler.py`` (which streams them). Nothing
here may be overridden.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .objectmeta import deep_copy
from .resources import ResourceType
from .selectors import FieldSelector, LabelSelector


class VersionClock(Protocol):
    """What a watch asks of its store: the cluster-wide resourceVersion now."""

    @property
    def current_rv(self) -> int: ...


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class StoredEvent:
    """One stored change, shared by every watcher (with a cache of its serialised forms)."""

    __slots__ = ("rv", "type", "obj", "prev", "cache")

    def __init__(self, rv: int, etype: str, obj: dict, prev: dict | None) -> None:
        self.rv = rv
        self.type = etype
        self.obj = obj
        self.prev = prev
        self.cache: dict[Any, Any] = {}


@dataclass
class WatchEvent:
    """What a watcher receives: the event type and the (shared, read-only) object."""

    type: str
    object: dict
    rv: int
    source: StoredEvent | None = None


class Watch:
    """A stream of (type, object) changes of one resource type, filtered like a real watch."""

    def __init__(self, clock: VersionClock, state: TypeState, rtype: ResourceType,
                 namespace: str | None, label_selector: LabelSelector,
                 field_selector: FieldSelector, queue_limit: int,
                 external: Callable[[dict], dict] | None = None) -> None:
        self._clock = clock
        self._state = state
        self.rtype = rtype
        self.namespace = namespace
        self._labels = label_selector
        self._fields = field_selector
        self._queue: deque[WatchEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._queue_limit = queue_limit
        self.overflowed = False
        self.last_rv = clock.current_rv
        self._external = external

    # -- filtering, fed synchronously by the store ------------------------------------------------

    def matches(self, obj: dict | None) -> bool:
        if obj is None:
            return False
        meta = obj["metadata"]
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self._labels.requirements and not self._labels.matches(meta.get("labels")):
            return False
        if self._fields.requirements and not self._fields.matches(obj):
            return False
        return True

    def offer(self, event: StoredEvent) -> None:
        """Queue ``event`` as this watcher sees it (or not at all), given its filters."""
        if self._closed:
            return
        now_match = event.type != "DELETED" and self.matches(event.obj)
        if event.type == "ADDED":
            if not now_match:
                return
            out = WatchEvent("ADDED", event.obj, event.rv, event)
        elif event.type == "MODIFIED":
            prev = event.prev
            was_match = self.matches(prev)
            if now_match and was_match:
                out = WatchEvent("MODIFIED", event.obj, event.rv, event)
            elif now_match:
                out = WatchEvent("ADDED", event.obj, event.rv, event)
            elif was_match and prev is not None:
                # Like the watch cache: the previous content, at the new resourceVersion.
                gone = dict(prev)
                gone["metadata"] = {**prev["metadata"], "resourceVersion": str(event.rv)}
                out = WatchEvent("DELETED", gone, event.rv, None)
            else:
                return
        else:  # DELETED
            if not self.matches(event.obj):
                return
            out = WatchEvent("DELETED", event.obj, event.rv, event)
        self.push(out)

    def push(self, event: WatchEvent) -> None:
        """Queue ``event`` as it is (the initial ADDED events of ``sendInitialEvents``)."""
        if len(self._queue) >= self._queue_limit:
            # A consumer this far behind would hold memory for ever; end it like a real server
            # ends a slow watcher. The client re-watches from its last resourceVersion.
            self.overflowed = True
            self._queue.clear()
            self.close()
            return
        self._queue.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- consumption ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def pending(self) -> int:
        return len(self._queue)

    def take_queued(self) -> list[WatchEvent]:
        """Every queued event, at once (the initial events, written before the first bookmark);
        ``last_rv`` stays where it is."""
        events = list(self._queue)
        self._queue.clear()
        return events

    def bookmark_rv(self) -> str:
        """A resourceVersion this watcher may resume from without missing anything."""
        return str(self._clock.current_rv if not self._queue else self.last_rv)

    async def next(self, timeout: float | None = None) -> WatchEvent | None:
        """The next event; None on timeout; raises StopAsyncIteration once closed and drained."""
        if not self._queue:
            if self._closed:
                raise StopAsyncIteration
            if timeout is not None and timeout <= 0:
                return None
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            # A plain timer on the future: far cheaper than wait_for() on a hot watch path.
            timer = loop.call_later(timeout, _wake, waiter) if timeout is not None else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self._queue:
                if self._closed:
                    raise StopAsyncIteration
                return None
        event = self._queue.popleft()
        self.last_rv = event.rv
        return event

    def external(self, obj: dict) -> dict:
        """The object as the watched API version presents it (shared; do not mutate)."""
        return self._external(obj) if self._external else obj

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> tuple[str, dict]:
        event = None
        while event is None:
            event = await self.next()
        return event.type, deep_copy(self.external(event.object))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._state.watchers.discard(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class TypeState:
    """Objects, the retained event window and the watchers of one stored resource type."""

    __slots__ = ("objects", "events", "evicted_rv", "watchers", "created_rv")

    def __init__(self, created_rv: int) -> None:
        self.objects: dict[str | None, dict[str, dict]] = {}
        self.events: deque[StoredEvent] = deque()
        self.evicted_rv = 0
        self.watchers: set[Watch] = set()
        self.created_rv = created_rv

    def iter_objects(self, namespace: str | None) -> Iterator[dict]:
        if namespace is not None:
            bucket = self.objects.get(namespace)
            if bucket:
                for name in sorted(bucket):
                    yield bucket[name]
            return
        for ns in sorted(self.objects, key=lambda n: n or ""):
            bucket = self.objects[ns]
            for name in sorted(bucket):
                yield bucket[name]

    def count(self) -> int:
        return sum(len(b) for b in self.objects.values())

    def record(self, event: StoredEvent, window: int) -> None:
        """Keep ``event`` in the last ``window`` events and offer it to every watcher."""
        events = self.events
        if len(events) >= window:
            self.evicted_rv = events.popleft().rv
        events.append(event)
        for watcher in list(self.watchers):
            watcher.offer(event)
