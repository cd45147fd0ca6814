"""Every write of a JupyterKernel's status and every Event about a kernel, in one place.

The provisioner (start, failure, restart, shutdown), the GPU queue (a waiter's position), the
gateway's culler (the mirrored activity, a new connection) and the cull actions (the reason
before a deletion, undoing it) all write ``jupyterkernels/status``; the provisioner and the cull
actions leave core v1 Events naming the record. They do it through these functions, so that:

* the API calls stay exactly the ones the shipped Roles grant (a merge or JSON patch of the
  ``status`` subresource; a create of ``events``) and nobody grows a new one by accident
  (``tests/deploy/test_rbac.py`` checks the Roles for unused grants and denials);
* timestamps are written in one format (RFC 3339, UTC, second precision, a Z: what the CRD's
  ``date-time`` fields and the Events' ``firstTimestamp`` hold), from one clock that a caller
  can replace (the day simulation and unit tests run on a virtual one);
* an Event always names its record the same way (``involvedObject``), so ``kubectl describe
  jupyterkernel`` shows them all.

Nothing here decides anything or swallows errors: a :class:`~.client.KubeError` reaches the
caller, which knows whether a failed write matters (a cull mark does; a queue position does not).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from . import resources as R
from .client import EVENTS, JSON, KubeClient
from .resources import format_timestamp

__all__ = [
    "Clock",
    "format_timestamp",
    "kernel_event",
    "now_timestamp",
    "patch_kernel_status",
    "patch_kernel_status_ops",
    "record_kernel_event",
    "utc_now",
]

#: Seconds since the epoch, as ``time.time`` gives them; what every policy decision reads.
Clock = Callable[[], float]

#: Longest status message and Event message written (the API server refuses far longer ones).
STATUS_MESSAGE_LIMIT = 32768
EVENT_MESSAGE_LIMIT = 1024


def utc_now(clock: Clock = time.time) -> datetime:
    """The clock's time as an aware UTC datetime (what the culling policy compares)."""
    return datetime.fromtimestamp(clock(), timezone.utc)


def now_timestamp(clock: Clock = time.time) -> str:
    """The clock's time formatted for a status field or an Event (see :func:`format_timestamp`,
    defined beside its parser in :mod:`.resources`)."""
    return format_timestamp(utc_now(clock))


async def patch_kernel_status(client: KubeClient, name: str, namespace: str | None,
                              status: JSON, *, resource_version: str = "",
                              uid: str = "") -> JSON:
    """Merge ``status`` into the JupyterKernel's status subresource; returns the record.

    ``resource_version`` makes the write conditional (409 when the record moved on); without
    one, ``uid`` rules out a re-created record of the same name (a real API server answers a
    changed uid with 422, so it is only sent alone).
    """
    body: JSON = {"status": status}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    elif uid:
        body["metadata"] = {"uid": uid}
    return await client.patch(R.JUPYTERKERNELS, name, body, namespace, subresource="status")


async def patch_kernel_status_ops(client: KubeClient, name: str, namespace: str | None,
                                  ops: Sequence[JSON]) -> JSON:
    """A JSON patch of the status subresource: ``test`` operations make it conditional on what
    the status says now (the one write that must not overwrite anyone else's)."""
    return await client.patch(R.JUPYTERKERNELS, name, list(ops), namespace,
                              patch_type="json", subresource="status")


def kernel_event(name: str, namespace: str, *, reason: str, message: str, type: str,
                 component: str, uid: str = "", action: str = "",
                 now: datetime | None = None) -> JSON:
    """The core v1 Event about the JupyterKernel ``name`` (its ``involvedObject``).

    With ``action`` (e.g. ``Cull``) the Event also says who reported it (``reportingComponent``
    and this host as ``reportingInstance``), as the culls' Events always have; the provisioner's
    start failures carry only ``source``.
    """
    stamp = format_timestamp(now or datetime.now(timezone.utc))
    involved: JSON = {
        "apiVersion": R.API_VERSION,
        "kind": R.KERNEL_KIND,
        "name": name,
        "namespace": namespace,
    }
    if uid:
        involved["uid"] = uid
    event: JSON = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name}.", "namespace": namespace},
        "involvedObject": involved,
        "reason": reason,
        "message": message[:EVENT_MESSAGE_LIMIT],
        "type": type,
    }
    if action:
        event.update({
            "action": action,
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": socket.gethostname()[:128],
        })
    else:
        event["source"] = {"component": component}
    event.update({"firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1})
    return event


async def record_kernel_event(client: KubeClient, name: str, namespace: str, *, reason: str,
                              message: str, type: str, component: str, uid: str = "",
                              action: str = "", now: datetime | None = None) -> Any:
    """Create :func:`kernel_event` in the kernel's namespace."""
    return await client.create(EVENTS, kernel_event(
        name, namespace, reason=reason, message=message, type=type, component=component,
        uid=uid, action=action, now=now), namespace)
