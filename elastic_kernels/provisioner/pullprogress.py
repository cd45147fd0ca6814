"""A starting kernel says when its pod waits for an image: ``Pulling image "…"`` in its status.

A pod waiting for its image shows only ``ContainerCreating``; the kubelet says what it does in a
``Pulling`` Event. A first start of a multi-GB image can take minutes, and a user who sees
"pulling image ghcr.io/…:0.1.0" knows the wait is the image (and that the next start will be
quick), where "ContainerCreating" says nothing. So while a start waits for its pod to run, the
provisioner follows the pod's ``Pulling`` Events and writes each new one into the
JupyterKernel's status (``reason: PullingImage``, the kubelet's message), which the status
stream and ``kubectl get jupyterkernels -o wide`` show.

The Events come from one shared watch per namespace (field selector
``involvedObject.kind=Pod,reason=Pulling``, so only pull Events cross the wire), not from a
request per kernel. A pull that began before the start looked is found in the watch's cache.
Writes are in order and the last one is awaited before the start goes on, so a late "Pulling"
never lands on top of the "Running" status that follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable

from ..kube.client import EVENTS, JSON, KubeError
from ..kube.connection import ClusterConnection
from ..kube.informer import Informer

log = logging.getLogger(__name__)

#: Only the kubelet's "Pulling" Events about pods: the field selector of the shared watch.
PULLING_EVENTS = "involvedObject.kind=Pod,reason=Pulling"
REASON_PULLING = "PullingImage"


def pull_message(event: JSON) -> str:
    """What a start shows for a Pulling Event: the kubelet's words, and the node."""
    message = str(event.get("message") or "Pulling image")
    node = str((event.get("source") or {}).get("host") or "")
    return f"{message} on node {node}" if node else message


_checked: weakref.WeakSet[Informer] = weakref.WeakSet()
_tasks: set[asyncio.Future[None]] = set()


async def _report_sync_failure(events: Informer) -> None:
    """Say once why starts show no pulls (e.g. a Role without list/watch on events); starts
    go on regardless, and the watch keeps trying."""
    try:
        await events.wait_synced(None)
    except KubeError as e:
        log.warning("Starts will not show image pulls: cannot watch Pulling events: %s", e)


async def watch_pulls(connection: ClusterConnection, namespace: str) -> Informer:
    """The namespace's shared watch of Pulling events, started if need be (a gateway starts it
    with its other watches, so no start pays for its first list).

    Not waited for: a start never waits for its progress reports, and a pull that began
    meanwhile arrives with the first list (the informer delivers it as an event).
    """
    events = await connection.informer(EVENTS, namespace, field_selector=PULLING_EVENTS,
                                       wait=False)
    if not events.synced and events not in _checked:
        _checked.add(events)
        _tasks.add(task := asyncio.ensure_future(_report_sync_failure(events)))
        task.add_done_callback(_tasks.discard)
    return events


@contextlib.asynccontextmanager
async def follow_pulls(connection: ClusterConnection, namespace: str, pod_name: str,
                       report: Callable[[str], Awaitable[None]]) -> AsyncIterator[None]:
    """While the body runs, ``report`` each new Pulling message about ``pod_name``."""
    events = await watch_pulls(connection, namespace)
    pending: asyncio.Queue[str | None] = asyncio.Queue()

    def about_pod(event: JSON) -> bool:
        involved = event.get("involvedObject") or {}
        return involved.get("name") == pod_name and event.get("reason") == "Pulling"

    def on_event(event_type: str, event: JSON, _old: JSON | None) -> None:
        if event_type != "DELETED" and about_pod(event):
            pending.put_nowait(pull_message(event))

    unlisten = events.add_listener(on_event)
    for event in events.items():
        if about_pod(event):
            pending.put_nowait(pull_message(event))

    async def reporter() -> None:
        reported = ""
        while (message := await pending.get()) is not None:
            if message == reported:
                continue
            reported = message
            try:
                await report(message)
            except Exception:  # noqa: BLE001 - progress is best effort; the start goes on
                log.exception("reporting %r for pod %s failed", message, pod_name)

    task = asyncio.ensure_future(reporter())
    try:
        yield
    finally:
        unlisten()
        # What is queued is stale (the pod has moved on); a write under way finishes first, so
        # it cannot land after what the start writes next.
        while not pending.empty():
            pending.get_nowait()
        pending.put_nowait(None)
        try:
            await task
        except asyncio.CancelledError:
            task.cancel()
            raise
