"""Shared watch caches: one list+watch per resource kind, however many kernels there are.

Peers poll the API server per kernel. Here each kind the gateway cares about (pods, kernel
records, kernelspecs, templates) has exactly one watch, kept in memory; lookups, liveness checks
and "wait until the pod runs" all answer from that cache. The watch itself is the only traffic.

The official client is synchronous, so the blocking stream read lives in one thread per
informer. Everything a caller sees (the cache, listeners, waiters) lives on the event loop: the
thread only hands decoded events over with ``call_soon_threadsafe``.

Failure handling follows client-go's reflector:

* a broken stream is re-opened from the last seen ``resourceVersion``, with jittered exponential
  back-off while the API server is unreachable, cut short as soon as any request through the
  same client reaches it again (so the caches catch up right after an outage, not one back-off
  later);
* ``410 Gone`` (the version fell out of the server's window) triggers a fresh list, and the
  difference against the cache is delivered as synthetic events, so a pod that vanished during an
  outage is still reported as DELETED;
* bookmarks keep the resume point fresh on quiet watches;
* a periodic relist (``resync_seconds``) is the safety net against anything missed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Iterable

from .client import JSON, KubeClient, KubeError, Resource

log = logging.getLogger(__name__)

Listener = Callable[[str, JSON, "JSON | None"], None]
"""Called on the event loop as ``listener(event_type, obj, old_obj)``."""

Key = tuple[str, str]  # (namespace or "", name)


def object_key(obj: JSON) -> Key:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


@dataclass
class _Waiter:
    key: Key | None
    predicate: Callable[[JSON | None], bool]
    future: asyncio.Future[JSON | None]


@dataclass
class InformerStats:
    lists: int = 0
    watches: int = 0
    events: int = 0
    errors: int = 0
    last_error: str = ""
    connected: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Informer:
    """A live, read-only mirror of one resource kind (optionally one namespace, one selector)."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        watch_timeout_seconds: int = 300,
        resync_seconds: float = 900.0,
        max_backoff_seconds: float = 10.0,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace if resource.namespaced else None
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout_seconds = watch_timeout_seconds
        self.resync_seconds = resync_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.stats = InformerStats()
        self._cache: dict[Key, JSON] = {}
        self._listeners: list[Listener] = []
        self._waiters: list[_Waiter] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: Set to end a back-off early: on stop, and when the API server is reachable again.
        self._wake = threading.Event()
        self._unsubscribe_recovery: Callable[[], None] | None = None
        self._stream_lock = threading.Lock()
        self._stream: Any = None
        self._synced = asyncio.Event()
        self._first_error: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        where = self.namespace or "all namespaces"
        return f"<Informer {self.resource.plural} in {where}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, wait: bool = True, timeout: float | None = 30.0) -> None:
        """Start the watch thread; by default wait until the first list has landed.

        If the first list fails (API unreachable, RBAC), the error is raised here so a gateway
        that cannot see its cluster says so at startup; the thread keeps retrying regardless.
        """
        if self._thread is not None:
            if wait:
                await self.wait_synced(timeout)
            return
        self._loop = asyncio.get_running_loop()
        self._first_error = self._loop.create_future()
        self._unsubscribe_recovery = self.client.add_recovery_listener(self._wake.set)
        self._thread = threading.Thread(
            target=self._run, name=f"informer-{self.resource.plural}", daemon=True
        )
        self._thread.start()
        if wait:
            await self.wait_synced(timeout)

    async def wait_synced(self, timeout: float | None = 30.0) -> None:
        assert self._first_error is not None, "start() first"
        synced = asyncio.ensure_future(self._synced.wait())
        either: set[asyncio.Future[Any]] = {synced, self._first_error}
        try:
            done, _ = await asyncio.wait(
                either, timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            synced.cancel()
        if self._synced.is_set():
            return
        if self._first_error in done:
            self._first_error.result()
        raise KubeError(0, "Timeout", f"{self!r} did not sync within {timeout}s")

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._unsubscribe_recovery is not None:
            self._unsubscribe_recovery()
            self._unsubscribe_recovery = None
        with self._stream_lock:
            if self._stream is not None:
                self._stream.close()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 5.0)
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.cancel()
        self._waiters.clear()

    # -- reading -----------------------------------------------------------------------------

    def get(self, name: str, namespace: str | None = None) -> JSON | None:
        ns = (namespace or self.namespace or "") if self.resource.namespaced else ""
        return self._cache.get((ns, name))

    def items(self) -> list[JSON]:
        return list(self._cache.values())

    def __len__(self) -> int:
        return len(self._cache)

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Subscribe to changes; returns the unsubscribe function."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    async def wait_for(
        self,
        predicate: Callable[[JSON | None], bool],
        name: str | None = None,
        namespace: str | None = None,
        timeout: float | None = None,
    ) -> JSON | None:
        """Wait until ``predicate`` holds for the named object (``None`` once it is absent).

        Without a name the predicate is tried on every changed object. Checked immediately against
        the cache, then on each event: no polling, no API traffic.
        """
        key: Key | None = None
        if name is not None:
            ns = (namespace or self.namespace or "") if self.resource.namespaced else ""
            key = (ns, name)
            current = self._cache.get(key)
            if predicate(current):
                return current
        else:
            for obj in self._cache.values():
                if predicate(obj):
                    return obj
        loop = asyncio.get_running_loop()
        waiter = _Waiter(key, predicate, loop.create_future())
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    # -- the loop side -----------------------------------------------------------------------

    def _deliver(self, event_type: str, obj: JSON) -> None:
        key = object_key(obj)
        old = self._cache.get(key)
        if event_type == "DELETED":
            self._cache.pop(key, None)
        else:
            self._cache[key] = obj
        self.stats.events += 1
        for listener in list(self._listeners):
            try:
                listener(event_type, obj, old)
            except Exception:
                log.exception("%r listener failed on %s %s", self, event_type, key)
        current = None if event_type == "DELETED" else obj
        for waiter in list(self._waiters):
            if waiter.future.done() or (waiter.key is not None and waiter.key != key):
                continue
            try:
                if waiter.predicate(current):
                    waiter.future.set_result(current)
            except Exception as e:  # a predicate may raise to fail the wait with a reason
                waiter.future.set_exception(e)

    def _replace_all(self, items: list[JSON]) -> None:
        """Apply a fresh list as the difference against the cache."""
        fresh = {object_key(o): o for o in items}
        for key, old in list(self._cache.items()):
            if key not in fresh:
                self._deliver("DELETED", old)
        for key, obj in fresh.items():
            previous = self._cache.get(key)
            if previous is None:
                self._deliver("ADDED", obj)
            elif _rv(previous) != _rv(obj):
                self._deliver("MODIFIED", obj)
        self._synced.set()

    def _set_error(self, message: str, exc: KubeError | None) -> None:
        self.stats.errors += 1
        self.stats.last_error = message
        self.stats.connected = False
        if exc is not None and self._first_error is not None and not self._first_error.done() \
                and not self._synced.is_set():
            self._first_error.set_exception(exc)

    def _set_connected(self, connected: bool) -> None:
        self.stats.connected = connected

    # -- the thread side ---------------------------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed under us during shutdown
            self._stop.set()

    def _list(self) -> str:
        result = self.client.request_sync(
            "GET", self.resource.path(self.namespace),
            query={"labelSelector": self.label_selector, "fieldSelector": self.field_selector},
        )
        self.stats.lists += 1
        items = result.get("items") or []
        kind = self.resource.kind
        for item in items:  # list items omit kind/apiVersion; watch events carry them
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", self.resource.api_version)
        self._post(self._replace_all, items)
        return str(result.get("metadata", {}).get("resourceVersion") or "")

    def _run(self) -> None:
        backoff = 0.2
        rv = ""
        listed_at = 0.0
        clock = time.monotonic
        while not self._stop.is_set():
            try:
                if not rv or clock() - listed_at > self.resync_seconds:
                    rv = self._list()
                    listed_at = clock()
                self._post(self._set_connected, True)
                rv = self._watch(rv)
                backoff = 0.2
            except KubeError as e:
                if self._stop.is_set():
                    break
                if e.gone:
                    log.info("%r: resourceVersion %s expired, relisting", self, rv)
                    rv = ""
                    continue
                self._post(self._set_error, str(e), e)
                log.warning("%r: %s; retrying in %.1fs", self, e, backoff)
            except Exception as e:  # never let the watch thread die
                if self._stop.is_set():
                    break
                err = KubeError(0, "Error", f"{type(e).__name__}: {e}")
                self._post(self._set_error, str(err), err)
                log.exception("%r: unexpected error; retrying in %.1fs", self, backoff)
            # Jittered back-off, cut short when another request finds the API server back.
            self._wake.wait(backoff * (0.5 + random.random()))
            self._wake.clear()
            backoff = min(backoff * 2, self.max_backoff_seconds)

    def _watch(self, rv: str) -> str:
        stream = self.client.open_watch(
            self.resource, self.namespace, rv,
            label_selector=self.label_selector, field_selector=self.field_selector,
            timeout_seconds=self.watch_timeout_seconds,
        )
        with self._stream_lock:
            if self._stop.is_set():
                stream.close()
                return rv
            self._stream = stream
        self.stats.watches += 1
        try:
            for event in stream:
                etype = event.get("type")
                obj = event.get("object") or {}
                if etype == "ERROR":
                    code = int(obj.get("code") or 500)
                    raise KubeError(code, str(obj.get("reason") or ""), str(obj.get("message")))
                new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                if new_rv:
                    rv = str(new_rv)
                if etype in ("ADDED", "MODIFIED", "DELETED"):
                    self._post(self._deliver, etype, obj)
        finally:
            with self._stream_lock:
                self._stream = None
            stream.close()
        return rv


def _rv(obj: JSON) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def at_least_version(cached: str, written: str) -> bool:
    """Whether an object at resourceVersion ``cached`` is the ``written`` one or a later one.

    The API contract calls resourceVersions opaque, so this is only a hint for waiting out a
    watch's lag: equal versions are the same write; integers (what etcd and the local cluster
    issue) are compared as such; anything else is not known to be later.
    """
    if cached == written:
        return True
    return cached.isdigit() and written.isdigit() and int(cached) > int(written)


async def start_all(informers: Iterable[Informer], timeout: float | None = 30.0) -> None:
    await asyncio.gather(*(i.start(timeout=timeout) for i in informers))
