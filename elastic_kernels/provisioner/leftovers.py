"""What a failed start may have left in the cluster, removed by name when the API could not say.

Why: a create that times out, whose connection breaks after the request went out, or that is
answered with a 5xx may still be carried out (``KubeError.outcome_unknown``). A hung API server
(stopped, or stuck on its storage) answers nothing for a while and then commits what it had
queued, long after the start failed with a 503. The JupyterKernel that appears then has no pod:
its user cannot see or delete it, no gateway re-attaches it (only running kernels are), the cull
cron's idle rule skips kernels that are still starting, and it counts against the user's kernel
limit and GPU quota.

The provisioner chose the kernel's names, so it removes what it may have made by name, in the
background, so that the client gets its error at once:

* when the record's uid is known (its create answered, a later step failed and the API server
  is in trouble), exactly that record is deleted;
* when it is not (the create itself had an unknown outcome), the record of that name is deleted
  only if it carries this start's random id (:data:`START_ID_ANNOTATION`), so a later start that
  reuses the kernel id (clients may choose it) is never touched. A record that is not there yet
  is waited for on the shared JupyterKernel watch: the API server may still create it.

Deleting the JupyterKernel removes its Pod and Secret too (ownerReferences). Attempts back off
(0.5 s doubling to 10 s, cut short when any request reaches the API server again) for a bounded
time; past it, the gateway's sweep (``gateway/lifecycle/hydration.py``) and the cull cron remove
a pod-less record once it is older than its launch timeout. Log lines name the kernel, the record
and the cause; never a key.

The module also knows which records a start in this process is creating right now
(:func:`live_start`, :func:`in_progress`), so that the sweep never takes one of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from ..kube import resources as R
from ..kube.client import JSON, KubeClient, KubeError
from ..kube.informer import Informer

log = logging.getLogger(__name__)

#: A random id per start, on the JupyterKernel it creates: what a removal by name checks.
START_ID_ANNOTATION = f"{R.GROUP}/start-id"

INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 10.0

_Key = tuple[str, str]  # (namespace, JupyterKernel name)

#: Records whose start is under way in this process (a start may be nested in a restart).
_live: Counter[_Key] = Counter()
_cleaners: WeakKeyDictionary[KubeClient, LeftoverCleaner] = WeakKeyDictionary()


@contextmanager
def live_start(namespace: str, name: str) -> Iterator[None]:
    """Mark the record ``name`` as being started here for the duration of the block."""
    key = (namespace, name)
    _live[key] += 1
    try:
        yield
    finally:
        _live[key] -= 1
        if _live[key] <= 0:
            del _live[key]


def in_progress(namespace: str, name: str) -> bool:
    """Whether a start in this process is creating the record, or still removing its leftover."""
    key = (namespace, name)
    return key in _live or any(c.pending(*key) for c in list(_cleaners.values()))


@dataclass(frozen=True)
class Leftover:
    """A JupyterKernel a failed start may have left; enough to find it again, and only it."""

    namespace: str
    name: str
    kernel_id: str
    #: The record's uid when its create answered; empty when the create's outcome is unknown.
    uid: str = ""
    #: The start's :data:`START_ID_ANNOTATION` (used when the uid is unknown).
    start_id: str = ""
    #: Why it may be there, for the log (no server text that could echo a request body).
    cause: str = ""

    def ours(self, record: JSON | None) -> bool:
        if record is None:
            return False
        meta = record.get("metadata") or {}
        if self.uid:
            return bool(meta.get("uid") == self.uid)
        annotations = meta.get("annotations") or {}
        return bool(self.start_id) and annotations.get(START_ID_ANNOTATION) == self.start_id


def cause_of(error: KubeError) -> str:
    """A failed request, for a log line: our own text when unanswered, else status and reason.
    A server's message may quote the request (a Secret's data), so it is left out."""
    if error.status == 0:
        return error.message[:300]
    return f"HTTP {error.status} {error.reason}".strip()


def retryable(error: KubeError) -> bool:
    """Unanswered, throttled or a server error: worth another attempt later."""
    return error.status in (0, 429) or error.status >= 500


def cleaner_for(client: KubeClient) -> LeftoverCleaner:
    """The one cleaner of ``client`` (its tasks share the client's recovery signal)."""
    cleaner = _cleaners.get(client)
    if cleaner is None:
        cleaner = _cleaners[client] = LeftoverCleaner(client)
    return cleaner


async def stop_all() -> None:
    """Cancel every removal still under way (the process is stopping); each logs that it did."""
    for cleaner in list(_cleaners.values()):
        await cleaner.stop()


class LeftoverCleaner:
    """Removes leftovers of one client's failed starts in background tasks (module docstring)."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self._tasks: dict[tuple[str, str, str], asyncio.Task[None]] = {}

    def pending(self, namespace: str, name: str) -> bool:
        return any(ns == namespace and n == name and not task.done()
                   for (ns, n, _), task in list(self._tasks.items()))

    def remove(self, item: Leftover, *, timeout: float, records: Informer | None = None,
               logger: logging.Logger | logging.LoggerAdapter[Any] | None = None
               ) -> asyncio.Task[None]:
        """Start removing ``item`` in the background, for at most ``timeout`` seconds.

        ``records`` is the shared JupyterKernel watch of the namespace: a record whose create
        is still in flight is waited for there instead of asked for again and again. ``logger``
        is where the removal reports (the provisioner's: the server's log).
        """
        out = logger or log
        key = (item.namespace, item.name, item.uid or item.start_id)
        task = self._tasks.get(key)
        if task is not None and not task.done():
            return task
        out.warning("Kernel %s: %s; removing JupyterKernel %s/%s in the background (for up to "
                    "%.0fs)", item.kernel_id, item.cause or "its start failed", item.namespace,
                    item.name, timeout)
        task = asyncio.ensure_future(self._run(item, timeout, records, out))
        self._tasks[key] = task
        task.add_done_callback(lambda t: self._tasks.pop(key, None)
                               if self._tasks.get(key) is t else None)
        return task

    async def stop(self) -> None:
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, item: Leftover, timeout: float, records: Informer | None,
                   log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = INITIAL_BACKOFF
        wake = asyncio.Event()
        last = ""

        def recovered() -> None:  # any thread
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop has closed
                pass

        unsubscribe = self.client.add_recovery_listener(recovered)
        try:
            while True:
                try:
                    done = await self._attempt(item, records, deadline, log)
                except KubeError as e:
                    if not retryable(e):
                        log.warning("Kernel %s: could not remove JupyterKernel %s: %s",
                                    item.kernel_id, item.name, cause_of(e))
                        return
                    if not last:
                        log.info("Kernel %s: cannot remove JupyterKernel %s yet (%s); retrying "
                                 "with back-off", item.kernel_id, item.name, cause_of(e))
                    last = cause_of(e)
                else:
                    if done:
                        return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    log.warning(
                        "Kernel %s: gave up removing JupyterKernel %s after %.0fs (%s); if it "
                        "exists, the gateway's sweep and the cull cron delete it once it is "
                        "older than its launch timeout", item.kernel_id, item.name, timeout,
                        last or "it did not appear")
                    return
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), min(delay, remaining))
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, MAX_BACKOFF)
        except asyncio.CancelledError:
            log.warning("Kernel %s: stopped before JupyterKernel %s was known to be removed; if it "
                        "exists, the gateway's sweep and the cull cron delete it once it is older "
                        "than its launch timeout", item.kernel_id, item.name)
            raise
        except Exception:  # e.g. the client was closed under us: must be seen, not crash
            log.exception("Kernel %s: removing JupyterKernel %s failed", item.kernel_id,
                          item.name)
        finally:
            unsubscribe()

    async def _attempt(self, item: Leftover, records: Informer | None, deadline: float,
                       log: logging.Logger | logging.LoggerAdapter[Any]) -> bool:
        """One try; True when there is nothing more to do. Raises KubeError to be retried."""
        uid = item.uid
        if not uid:
            record = records.get(item.name, item.namespace) if records is not None else None
            if not item.ours(record):
                record = await self._get(item)
            if record is None:
                if records is None:
                    return False  # ask again after the back-off
                # Not there (yet): the API server may still carry the create out.
                remaining = deadline - asyncio.get_running_loop().time()
                try:
                    record = await records.wait_for(item.ours, item.name, item.namespace,
                                                    timeout=max(0.0, remaining))
                except asyncio.TimeoutError:
                    log.info("Kernel %s: JupyterKernel %s was not created; nothing to remove",
                             item.kernel_id, item.name)
                    return True
            if not item.ours(record):
                log.info("Kernel %s: JupyterKernel %s belongs to another start; left alone",
                         item.kernel_id, item.name)
                return True
            assert record is not None
            meta = record.get("metadata") or {}
            if meta.get("deletionTimestamp"):
                return True
            uid = str(meta.get("uid") or "")
        try:
            await self.client.delete(R.JUPYTERKERNELS, item.name, item.namespace,
                                     grace_period_seconds=0, preconditions={"uid": uid})
        except KubeError as e:
            if e.not_found:
                log.info("Kernel %s: JupyterKernel %s is gone already", item.kernel_id, item.name)
                return True
            if e.conflict:  # the uid precondition failed: a newer record of that name
                log.info("Kernel %s: JupyterKernel %s belongs to another start; left alone",
                         item.kernel_id, item.name)
                return True
            raise
        log.warning("Kernel %s: removed JupyterKernel %s/%s left by a failed start (%s); its pod "
                    "and Secret go with it", item.kernel_id, item.namespace, item.name,
                    item.cause or "start failed")
        return True

    async def _get(self, item: Leftover) -> JSON | None:
        try:
            found: Any = await self.client.get(R.JUPYTERKERNELS, item.name, item.namespace)
        except KubeError as e:
            if e.not_found:
                return None
            raise
        return found if isinstance(found, dict) else None
