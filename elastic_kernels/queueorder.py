"""The GPU queue's one fair order, as a pure function of what the cluster shows.

With several gateway replicas every replica must put the waiting GPU starts in the *same* order,
or positions differ by replica and two replicas each let their own "head" through. So the order
is computed from shared state only, by this module, the same way everywhere:

* A waiting start is its kernel pod: unbound (no ``spec.nodeName``), not being deleted, and
  carrying :data:`QUEUE_ANNOTATION`. The replica that took the start writes that annotation once:
  the kernel, its user, the GPUs it asks for and of which flavor (extended resource), when it
  began to wait and its *round*.
* Each GPU flavor (``nvidia.com/gpu``, ``nvidia.com/mig-1g.10gb``, ...) is its own queue: a
  MIG slice cannot serve a kernel waiting for a whole GPU, so a waiter of one flavor never
  holds up another's (:func:`by_flavor`).
* The round is fixed on arrival: how many of the same user's starts of that flavor were
  already waiting (:func:`round_for`). The order is by round, then by the time the wait began,
  then by kernel id (:func:`order_key`): round robin across users, first come first served
  within a user. A user who was just served does not jump back ahead of one who was not.
* Whether the pod is still gated, the scheduler's "no room" verdict, and the idle kernel
  reclaimed for it (:data:`RECLAIM_ANNOTATION`) are read from the same pod.

Nothing here talks to the API; the gateway's ``gateway/lifecycle/queueboard.py`` reads the pod
watch and writes the annotations, ``gateway/lifecycle/gpuqueue.py`` acts on the order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from .kube import resources as R

__all__ = [
    "QUEUE_ANNOTATION",
    "RECLAIM_ANNOTATION",
    "QueueEntry",
    "by_flavor",
    "entry_from_pod",
    "fair_order",
    "heads",
    "format_since",
    "order_key",
    "queue_annotation",
    "round_for",
]

#: On a waiting GPU kernel pod: who waits, for how many GPUs, since when, in which round (JSON).
QUEUE_ANNOTATION = f"{R.GROUP}/gpu-queue"
#: On a waiting GPU kernel pod: the id of the idle kernel reclaimed for it (written once, with
#: the pod's resourceVersion as precondition, so one replica reclaims and the others see it).
RECLAIM_ANNOTATION = f"{R.GROUP}/gpu-queue-reclaimed"

_E = TypeVar("_E")


@dataclass(frozen=True)
class QueueEntry:
    """One waiting start as the cluster shows it."""

    kernel_id: str
    user: str
    gpus: int
    since: datetime
    round: int
    namespace: str
    pod_name: str
    gated: bool
    unschedulable: str = ""
    reclaimed: str = ""
    resource_version: str = ""
    #: The GPU flavor it waits for (entries written before flavors existed wait for whole GPUs).
    resource: str = R.GPU_RESOURCE


def order_key(round_: int, since: datetime, kernel_id: str) -> tuple[int, datetime, str]:
    """Round first, then the time the wait began, then the id (a total order, so ties agree)."""
    return (round_, since, kernel_id)


def fair_order(entries: Iterable[QueueEntry]) -> list[QueueEntry]:
    return sorted(entries, key=lambda e: order_key(e.round, e.since, e.kernel_id))


def by_flavor(entries: Iterable[_E], flavor: Callable[[_E], str]) -> dict[str, list[_E]]:
    """Entries grouped by the GPU flavor they wait for, each group keeping the given order."""
    groups: dict[str, list[_E]] = {}
    for entry in entries:
        groups.setdefault(flavor(entry), []).append(entry)
    return groups


def heads(ordered: Sequence[_E], ungated: int) -> list[_E]:
    """The waiters of one flavor's fair order (``ordered``) whose pods are left ungated: the
    first ``ungated`` (at least the head).

    With one, only the head is schedulable and the order is exactly ours. With more (the
    autoscaler mode), a cluster autoscaler sees that many unschedulable pods and adds nodes;
    the scheduler then chooses among them, so the order holds between the window and those
    behind it, and within the window only as far as the scheduler's own order (priority, then
    the time each pod entered its queue, which is when we ungated it: in our order) agrees.

    A gate cannot be put back (the API refuses adding one after creation), so a waiter once
    ungated stays ungated: when a newcomer of a new user sorts ahead of it, the window holds
    one more than ``ungated`` until one of them is placed.
    """
    return list(ordered[:max(1, ungated)])


def round_for(user: str, waiting_users: Iterable[str]) -> int:
    """The round of a start that arrives now: the user's starts already waiting."""
    return sum(1 for u in waiting_users if u == user)


def format_since(moment: datetime) -> str:
    """Microsecond precision: a replica's arrivals stay distinct and in order after a round trip."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def queue_annotation(kernel_id: str, user: str, gpus: int, since: datetime, round_: int,
                     resource: str = R.GPU_RESOURCE) -> str:
    return json.dumps({"kernel": kernel_id, "user": user, "gpus": gpus,
                       "since": format_since(since), "round": round_, "resource": resource},
                      separators=(",", ":"), sort_keys=True)


def _unschedulable(status: Mapping[str, Any]) -> str:
    for condition in status.get("conditions") or ():
        if (isinstance(condition, Mapping) and condition.get("type") == "PodScheduled"
                and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"):
            return str(condition.get("message") or "Unschedulable")
    return ""


def entry_from_pod(pod: Mapping[str, Any]) -> QueueEntry | None:
    """The waiting start ``pod`` stands for, or None (not queued, bound, going, malformed)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    annotations = meta.get("annotations") or {}
    raw = annotations.get(QUEUE_ANNOTATION)
    if not raw or meta.get("deletionTimestamp") or spec.get("nodeName"):
        return None
    if status.get("phase") not in (None, "", "Pending"):
        return None
    try:
        data = json.loads(raw)
        kernel_id = str(data["kernel"])
        user = str(data["user"])
        gpus = int(data["gpus"])
        since = R.parse_timestamp(data["since"])
        round_ = int(data["round"])
        resource = str(data.get("resource") or R.GPU_RESOURCE)
    except (ValueError, TypeError, KeyError):
        return None  # not ours to order; a malformed entry must not break everyone's queue
    return QueueEntry(
        kernel_id=kernel_id, user=user, gpus=gpus, since=since, round=round_,
        namespace=str(meta.get("namespace") or ""), pod_name=str(meta.get("name") or ""),
        gated=bool(spec.get("schedulingGates")), unschedulable=_unschedulable(status),
        reclaimed=str(annotations.get(RECLAIM_ANNOTATION) or ""),
        resource_version=str(meta.get("resourceVersion") or ""), resource=resource)
