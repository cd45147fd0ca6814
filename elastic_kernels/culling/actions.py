"""Carrying out a cull decision through the Kubernetes API: record the reason, delete with
optimistic concurrency, leave an Event.

The decision itself is :mod:`elastic_kernels.culling.policy` (pure); the status writes and the
Event go through :mod:`elastic_kernels.kube.records`, like every other write of a kernel's
status. Used by the ``elastic-kernels cull`` cron, by the gateway's culler (which shuts its
kernel down itself, between the mark and the Event) and by its sweep of abandoned starts.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ..kube import records
from ..kube import resources as R
from ..kube.client import JSON, KubeClient, KubeError
from .policy import CULL_REASONS, CullDecision, CullReason, KernelFacts

log = logging.getLogger(__name__)

class CullOutcome(str, enum.Enum):
    DELETED = "deleted"
    WOULD_DELETE = "would delete"  # dry run
    ALREADY_GONE = "already gone"  # deleted (or being culled) by someone else: fine
    CHANGED = "changed"  # written by someone else since the decision; not culled this time
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class CullResult:
    decision: CullDecision
    outcome: CullOutcome
    detail: str = ""
    #: For CHANGED: the record as it is now, so the caller can decide again.
    current: JSON | None = field(default=None, compare=False, repr=False)


class CullConflict(Exception):
    """The record changed (or vanished) after the decision; ``result`` says how."""

    def __init__(self, result: CullResult) -> None:
        super().__init__(result.detail)
        self.result = result


def _preconditions(kernel: KernelFacts, resource_version: str | None = None) -> JSON:
    pre: JSON = {}
    if kernel.uid:
        pre["uid"] = kernel.uid
    rv = resource_version if resource_version is not None else kernel.resource_version
    if rv:
        pre["resourceVersion"] = rv
    return pre


async def _explain_conflict(client: KubeClient, decision: CullDecision,
                            error: KubeError) -> CullResult:
    """After a 404/409, find out whether someone else culled the kernel or merely wrote to it."""
    kernel = decision.kernel
    if error.not_found:
        return CullResult(decision, CullOutcome.ALREADY_GONE, "already deleted")
    try:
        current = await client.get(R.JUPYTERKERNELS, kernel.name, kernel.namespace)
    except KubeError as e:
        if e.not_found:
            return CullResult(decision, CullOutcome.ALREADY_GONE, "already deleted")
        return CullResult(decision, CullOutcome.FAILED, f"conflict, then could not re-read: {e}")
    meta = current.get("metadata") or {}
    status = current.get("status") or {}
    if kernel.uid and meta.get("uid") != kernel.uid:
        return CullResult(decision, CullOutcome.ALREADY_GONE,
                          "already deleted (a new kernel record has the same name)")
    if meta.get("deletionTimestamp"):
        return CullResult(decision, CullOutcome.ALREADY_GONE, "already being deleted")
    if status.get("phase") == R.PHASE_TERMINATING and status.get("reason") in CULL_REASONS:
        return CullResult(decision, CullOutcome.ALREADY_GONE,
                          f"already being culled ({status.get('reason')})")
    return CullResult(decision, CullOutcome.CHANGED,
                      "the record changed since it was read; not culled this time",
                      current=current)


async def mark_culled(client: KubeClient, decision: CullDecision) -> JSON:
    """Write the reason into ``status`` if the record is still as decided on; returns it updated.

    The write is conditional on the record's resourceVersion, so of two cullers that decided on
    the same version exactly one wins; the other gets :class:`CullConflict`. The gateway's kernel
    manager calls this before its own shutdown, so the DELETED watch event (and the model it
    shows the user) carries the reason.
    """
    kernel = decision.kernel
    # In a patch body the resourceVersion is the precondition (the API server answers 409 when
    # it moved on). It also rules out a re-created record of the same name, so the uid is only
    # sent without one (records.patch_kernel_status).
    try:
        return await records.patch_kernel_status(
            client, kernel.name, kernel.namespace, _mark(decision),
            resource_version=kernel.resource_version, uid=kernel.uid)
    except KubeError as e:
        if e.not_found or e.conflict:
            raise CullConflict(await _explain_conflict(client, decision, e)) from None
        raise


def _mark(decision: CullDecision) -> JSON:
    """The status a cull writes before the deletion: Terminating, and why."""
    return {
        "phase": R.PHASE_TERMINATING,
        "reason": decision.reason.value,
        "message": decision.message[:records.STATUS_MESSAGE_LIMIT],
    }


async def _unmark(client: KubeClient, decision: CullDecision) -> None:
    """Undo :func:`mark_culled` when the deletion failed, but only if our mark is still there.

    A JSON patch whose ``test`` operations check our phase, reason and message: a status written
    by anyone since is never overwritten.
    """
    kernel = decision.kernel
    mark = _mark(decision)
    ops: list[JSON] = [
        {"op": "test", "path": "/status/phase", "value": mark["phase"]},
        {"op": "test", "path": "/status/reason", "value": mark["reason"]},
        {"op": "test", "path": "/status/message", "value": mark["message"]},
        {"op": "replace", "path": "/status/phase", "value": kernel.phase},
        {"op": "replace", "path": "/status/reason", "value": kernel.reason},
        {"op": "replace", "path": "/status/message", "value": kernel.message},
    ]
    try:
        await records.patch_kernel_status_ops(client, kernel.name, kernel.namespace, ops)
    except KubeError as e:
        log.info("Kernel %s: left its cull mark in place (%s)", kernel.kernel_id, e)


def cull_event(decision: CullDecision, component: str, now: datetime | None = None) -> JSON:
    """The core v1 Event that says a kernel was culled and why (involvedObject: the record)."""
    kernel = decision.kernel
    return records.kernel_event(
        kernel.name, kernel.namespace, uid=kernel.uid, reason=decision.reason.value,
        message=decision.message, type=_event_type(decision), component=component,
        action="Cull", now=now)


def _event_type(decision: CullDecision) -> str:
    """Warning for what went wrong elsewhere (a gateway died, a start failed); else Normal."""
    if decision.reason in (CullReason.ORPHANED, CullReason.LAUNCH_ABANDONED):
        return "Warning"
    return "Normal"


async def record_cull_event(client: KubeClient, decision: CullDecision,
                            component: str = "elastic-kernels") -> None:
    kernel = decision.kernel
    await records.record_kernel_event(
        client, kernel.name, kernel.namespace, uid=kernel.uid, reason=decision.reason.value,
        message=decision.message, type=_event_type(decision), component=component,
        action="Cull")


async def cull_kernel(
    client: KubeClient,
    decision: CullDecision,
    *,
    component: str = "elastic-kernels",
    grace_period_seconds: int | None = None,
) -> CullResult:
    """Carry out one decision: mark the record, delete it, leave an Event. Never raises KubeError.

    The deletion is conditional on the uid and on the resourceVersion our mark produced, so
    overlapping cull runs (or a cron and a gateway) delete a kernel exactly once: the loser sees
    404/409 and reports ALREADY_GONE (or CHANGED when someone wrote to a record that is not being
    culled, e.g. fresh activity). Garbage collection removes the pod and Secret the record owns.
    The Event is written only after a successful deletion, so there is one per cull.
    """
    kernel = decision.kernel
    try:
        marked = await mark_culled(client, decision)
    except CullConflict as c:
        return c.result
    except KubeError as e:
        return CullResult(decision, CullOutcome.FAILED, f"could not record the reason: {e}")

    rv = str((marked.get("metadata") or {}).get("resourceVersion") or "")
    try:
        await client.delete(R.JUPYTERKERNELS, kernel.name, kernel.namespace,
                            grace_period_seconds=grace_period_seconds,
                            preconditions=_preconditions(kernel, rv))
    except KubeError as e:
        if e.not_found:
            return CullResult(decision, CullOutcome.ALREADY_GONE, "already deleted")
        await _unmark(client, decision)
        if e.conflict:
            return await _explain_conflict(client, decision, e)
        return CullResult(decision, CullOutcome.FAILED, f"could not delete: {e}")

    try:
        await record_cull_event(client, decision, component)
    except KubeError as e:
        return CullResult(decision, CullOutcome.DELETED, f"deleted, but no Event was recorded: {e}")
    return CullResult(decision, CullOutcome.DELETED)


async def cull_all(
    client: KubeClient,
    decisions: Sequence[CullDecision],
    *,
    concurrency: int = 8,
    component: str = "elastic-kernels",
    grace_period_seconds: int | None = None,
) -> list[CullResult]:
    """Carry out many decisions concurrently; one slow deletion does not hold up the others.

    At most ``concurrency`` are in flight (the client's thread pool bounds it too); results come
    back in the order of ``decisions``.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    gate = asyncio.Semaphore(concurrency)

    async def one(decision: CullDecision) -> CullResult:
        async with gate:
            return await cull_kernel(client, decision, component=component,
                                     grace_period_seconds=grace_period_seconds)

    return list(await asyncio.gather(*(one(d) for d in decisions)))
