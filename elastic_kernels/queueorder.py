"""The GPU queue's one fair order, as a pure function of what the cluster shows.

With several gateway replicas every replica must put the waiting GPU starts in the *same* order,
or positions differ by replica and two replicas each let their own "head" through. So the order
is computed from shared state only, by this module, the same way everywhere:

* A waiting start is its kernel pod: unbound (no ``spec.nodeName``), not being deleted, and
  carrying :data:`QUEUE_ANNOTATION`. The replica that took the start writes that annotation once:
  the kernel, its user, the GPUs it asks for, when it began to wait and its *round*.
* The round is fixed on arrival: how many of the same user's starts were already waiting
  (:func:`round_for`). The order is by round, then by the time the wait began, then by kernel id
  (:func:`order_key`): round robin across users, first come first served within a user. A user
  who was just served does not jump back ahead of one who was not.
* Whether the pod is still gated, the scheduler's "no room" verdict, and the idle kernel
  reclaimed for it (:data:`RECLAIM_ANNOTATION`) are read from the same pod.

Nothing here talks to the API; the gateway's ``gateway/lifecycle/queueboard.py`` reads the pod
watch and writes the annotations, ``gateway/lifecycle/gpuqueue.py`` acts on the order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .kube import resources as R

__all__ = [
    "QUEUE_ANNOTATION",
    "RECLAIM_ANNOTATION",
    "QueueEntry",
    "entry_from_pod",
    "fair_order",
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


def order_key(round_: int, since: datetime, kernel_id: str) -> tuple[int, datetime, str]:
    """Round first, then the time the wait began, then the id (a total order, so ties agree)."""
    return (round_, since, kernel_id)


def fair_order(entries: Iterable[QueueEntry]) -> list[QueueEntry]:
    return sorted(entries, key=lambda e: order_key(e.round, e.since, e.kernel_id))


def round_for(user: str, waiting_users: Iterable[str]) -> int:
    """The round of a start that arrives now: the user's starts already waiting."""
    return sum(1 for u in waiting_users if u == user)


def format_since(moment: datetime) -> str:
    """Microsecond precision: a replica's arrivals stay distinct and in order after a round trip."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def queue_annotation(kernel_id: str, user: str, gpus: int, since: datetime, round_: int) -> str:
    return json.dumps({"kernel": kernel_id, "user": user, "gpus": gpus,
                       "since": format_since(since), "round": round_},
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
    except (ValueError, TypeError, KeyError):
        return None  # not ours to order; a malformed entry must not break everyone's queue
    return QueueEntry(
        kernel_id=kernel_id, user=user, gpus=gpus, since=since, round=round_,
        namespace=str(meta.get("namespace") or ""), pod_name=str(meta.get("name") or ""),
        gated=bool(spec.get("schedulingGates")), unschedulable=_unschedulable(status),
        reclaimed=str(annotations.get(RECLAIM_ANNOTATION) or ""),
        resource_version=str(meta.get("resourceVersion") or ""))
