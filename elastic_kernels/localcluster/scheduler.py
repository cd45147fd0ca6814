"""kube-scheduler for the local cluster: binds pending pods to simulated nodes.

It keeps its own view of pods and nodes from store watches (like an informer), and is woken by
events, never by a timer:

* a new pending pod is tried once at once;
* pods that did not fit wait, with the real ``PodScheduled=False/Unschedulable`` condition and a
  ``FailedScheduling`` Event, until something could make room -- a bound pod finishing or being
  removed, or a node being added or changed -- and are then retried in queue order: priority
  first, then the time each pod entered the scheduling queue (kube-scheduler's PrioritySort).
  A pod with scheduling gates enters it only when its last gate is removed, so pods ungated one
  after another (the GPU queue's autoscaler mode) are tried in the order they were ungated,
  not in the order they were created.

Pods with ``persistentVolumeClaim`` volumes also pass the volume plugins (``volumefit.py``):
missing or unbound claims keep them Pending, and access modes and volume node affinity narrow
the nodes; claim, volume and class changes retry the waiting pods.

A pod that is retried and still does not fit bumps the existing Event's count; its condition is
only rewritten when the message changes, so waiting pods cause no write storms.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from dataclasses import dataclass
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .errors import ApiError
from .eventrecorder import EventRecorder, now_rfc3339
from .claims import PVCS, PVS, STORAGE_CLASSES
from .fit import (NO_NODES_MESSAGE, add_resources, allocated_by_node, choose_node, is_terminal,
                  needs_scheduling, nonzero_requests, pod_requests, unschedulable_message)
from .objectmeta import rv_of
from .tasks import cancel_all
from .volumefit import WAIT, ClaimUsage, StorageView
from .volumefit import node_failures as volume_node_failures
from .volumefit import prefilter as volume_prefilter

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

PODS = ("", "pods")
NODES = ("", "nodes")
JSON = dict[str, Any]


def _storage_key(obj: JSON) -> Any:
    """Claims by (namespace, name); volumes and classes by name."""
    meta = obj.get("metadata") or {}
    if meta.get("namespace"):
        return (meta["namespace"], meta.get("name"))
    return meta.get("name")


def _uid(obj: JSON) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


@dataclass
class _Waiting:
    """A pod in the scheduling queue."""

    seq: int
    attempted: bool = False
    signature: Any = None


def _scheduling_signature(pod: JSON) -> Any:
    """The parts of a pending pod that decide where it fits (tolerations may be added)."""
    spec = pod.get("spec") or {}
    return repr((spec.get("tolerations"), spec.get("nodeSelector"), spec.get("affinity"),
                 sorted(pod_requests(pod).items())))


def _node_signature(node: JSON) -> Any:
    status = node.get("status") or {}
    ready = [c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return repr(((node.get("metadata") or {}).get("labels"), (node.get("spec") or {}).get("taints"),
                 (node.get("spec") or {}).get("unschedulable"), status.get("allocatable"),
                 status.get("capacity"), ready))


async def run_informer(store: Store, key: tuple[str, str],
                       on_list: Callable[[list[JSON]], None],
                       on_event: Callable[[str, JSON], None],
                       stopping: Callable[[], bool], name: str) -> None:
    """List then watch ``key`` for ever; relist on 410 Gone or when the watch ends early.

    ``on_list`` gets the full list (first call and after every relist) so the caller can
    rebuild its view; ``on_event`` each change. Handler errors are logged and do not stop it.
    """
    rv: str | None = None
    while not stopping():
        try:
            if rv is None:
                items, rv = store.list(key)
                on_list(items)
            watch = store.watch(key, resource_version=rv)
        except ApiError as e:
            if e.code == 410:
                rv = None
                continue
            log.error("%s: cannot watch %s: %s", name, key, e.message)
            await asyncio.sleep(0.5)
            continue
        try:
            async for etype, obj in watch:
                new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                if etype == "ERROR":
                    rv = None
                    break
                if new_rv:
                    rv = str(new_rv)
                try:
                    on_event(etype, obj)
                except Exception:
                    log.exception("%s: handling %s %s failed", name, etype,
                                  (obj.get("metadata") or {}).get("name"))
        except ApiError as e:
            rv = None if e.code == 410 else rv
        finally:
            watch.close()
        if getattr(watch, "overflowed", False):
            rv = None  # we fell behind and lost events: rebuild from a fresh list
        if not stopping():
            await asyncio.sleep(0.05)  # the store ended the watch; resume without spinning


class Scheduler:
    """Binds pods to nodes like kube-scheduler (see the module docstring)."""

    def __init__(self, store: Store, *, scheduler_name: str = "default-scheduler") -> None:
        self.store = store
        self.scheduler_name = scheduler_name
        self.events = EventRecorder(store, "default-scheduler")
        self._pods: dict[str, JSON] = {}
        self._nodes: dict[str, JSON] = {}
        self._queue: dict[str, _Waiting] = {}
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._retry_all = False
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # uid -> the Unschedulable message last written, to skip identical rewrites
        self._last_message: dict[str, str] = {}
        self._storage = StorageView()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._informer(NODES, self._on_node_list, self._on_node_event),
                                name="scheduler-nodes"),
            asyncio.create_task(self._informer(PODS, self._on_pod_list, self._on_pod_event),
                                name="scheduler-pods"),
            asyncio.create_task(self._run(), name="scheduler-loop"),
        ]
        for key, index in ((PVCS, self._storage.claims), (PVS, self._storage.volumes),
                           (STORAGE_CLASSES, self._storage.classes)):
            self._tasks.append(asyncio.create_task(
                self._informer(key, functools.partial(self._on_storage_list, index),
                               functools.partial(self._on_storage_event, index)),
                name=f"scheduler-{key[1]}"))
        await asyncio.sleep(0)

    async def stop(self) -> None:
        self._stopping = True
        await cancel_all(self._tasks)
        self._tasks = []

    def _informer(self, key: tuple[str, str], on_list: Callable[[list[JSON]], None],
                  on_event: Callable[[str, JSON], None]) -> Coroutine[Any, Any, None]:
        return run_informer(self.store, key, on_list, on_event, lambda: self._stopping,
                            "scheduler")

    # -- the view of the cluster -------------------------------------------------------------------

    def _on_node_list(self, nodes: list[JSON]) -> None:
        self._nodes = {n["metadata"]["name"]: n for n in nodes}
        self._capacity_changed()

    def _on_node_event(self, etype: str, node: JSON) -> None:
        name = node["metadata"]["name"]
        old = self._nodes.get(name)
        if etype == "DELETED":
            self._nodes.pop(name, None)
            return  # fewer nodes never lets a waiting pod fit
        if old is not None and rv_of(old) > rv_of(node):
            return
        self._nodes[name] = node
        if old is None or _node_signature(old) != _node_signature(node):
            self._capacity_changed()

    def _on_storage_list(self, index: dict[Any, JSON], items: list[JSON]) -> None:
        index.clear()
        for obj in items:
            index[_storage_key(obj)] = obj
        self._capacity_changed()

    def _on_storage_event(self, index: dict[Any, JSON], etype: str, obj: JSON) -> None:
        """A claim, volume or class changed: waiting pods may now fit (a claim bound, say)."""
        key = _storage_key(obj)
        if etype == "DELETED":
            index.pop(key, None)
        else:
            index[key] = obj
        if self._queue:
            self._capacity_changed()

    def _on_pod_list(self, pods: list[JSON]) -> None:
        self._pods = {}
        live = set()
        for pod in pods:
            uid = _uid(pod)
            live.add(uid)
            self._pods[uid] = pod
            if needs_scheduling(pod) and self._owned(pod):
                self._queue.setdefault(uid, _Waiting(next(self._seq)))
            else:
                self._queue.pop(uid, None)
        for uid in [u for u in self._queue if u not in live]:
            del self._queue[uid]
        self._capacity_changed()

    def _on_pod_event(self, etype: str, pod: JSON) -> None:
        uid = _uid(pod)
        old = self._pods.get(uid)
        if etype == "DELETED":
            self._pods.pop(uid, None)
            self._queue.pop(uid, None)
            self._last_message.pop(uid, None)
            self.events.forget(uid)
            if old is not None and (old.get("spec") or {}).get("nodeName") and not is_terminal(old):
                self._capacity_changed()
            return
        if old is not None and rv_of(old) > rv_of(pod):
            return  # an older event than what we already know (we bound it meanwhile)
        self._pods[uid] = pod
        if needs_scheduling(pod) and self._owned(pod):
            waiting = self._queue.get(uid)
            if waiting is None:
                self._queue[uid] = _Waiting(next(self._seq))
                self._wake.set()
            elif waiting.attempted and waiting.signature != _scheduling_signature(pod):
                waiting.attempted = False  # e.g. a toleration was added: try again
                self._wake.set()
            return
        self._queue.pop(uid, None)
        if (pod.get("spec") or {}).get("schedulingGates"):
            self._mark_gated(pod)
        if (old is not None and (old.get("spec") or {}).get("nodeName")
                and not is_terminal(old) and is_terminal(pod)):
            self._capacity_changed()

    def _owned(self, pod: JSON) -> bool:
        name = (pod.get("spec") or {}).get("schedulerName") or "default-scheduler"
        return name == self.scheduler_name

    def _capacity_changed(self) -> None:
        self._retry_all = True
        self._wake.set()

    # -- scheduling --------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            try:
                self.schedule_pending()
            except Exception:
                log.exception("scheduling pass failed")
            # Let watch events that our own writes produced be consumed before the next pass.
            await asyncio.sleep(0)

    def _order(self, uid: str) -> tuple[int, int]:
        pod = self._pods.get(uid) or {}
        priority = int((pod.get("spec") or {}).get("priority") or 0)
        return (-priority, self._queue[uid].seq)

    def schedule_pending(self) -> None:
        """One pass over the queue: new pods, plus every waiting pod if capacity may have freed."""
        retry_all, self._retry_all = self._retry_all, False
        candidates = [uid for uid, w in self._queue.items() if retry_all or not w.attempted]
        if not candidates:
            return
        candidates.sort(key=self._order)
        used, counts, scored = allocated_by_node(self._pods.values())
        usage = ClaimUsage(self._pods.values())
        nodes = sorted(self._nodes.values(), key=lambda n: n["metadata"]["name"])
        for uid in candidates:
            pod = self._pods.get(uid)
            waiting = self._queue.get(uid)
            if pod is None or waiting is None:
                continue
            try:
                verdict = volume_prefilter(pod, self._storage)
                if verdict is not None:
                    waiting.attempted = True
                    waiting.signature = _scheduling_signature(pod)
                    if verdict != WAIT:
                        self._unschedulable(pod, f"0/{len(nodes)} nodes are available: "
                                                 f"{verdict}." if nodes else NO_NODES_MESSAGE)
                    continue
                node_name, failures = choose_node(
                    pod, nodes, used, counts, scored,
                    functools.partial(volume_node_failures, pod, view=self._storage,
                                      usage=usage))
                if node_name is None:
                    waiting.attempted = True
                    waiting.signature = _scheduling_signature(pod)
                    self._unschedulable(pod, unschedulable_message(len(nodes), failures))
                    continue
                bound = self._bind(pod, node_name)
                self._queue.pop(uid, None)
                if bound is not None:
                    self._pods[uid] = bound
                    add_resources(used.setdefault(node_name, {}), pod_requests(pod))
                    add_resources(scored.setdefault(node_name, {}), nonzero_requests(pod))
                    counts[node_name] = counts.get(node_name, 0) + 1
                    usage.add(bound, node_name)
            except Exception:
                waiting.attempted = True
                log.exception("scheduling pod %s/%s failed", pod["metadata"].get("namespace"),
                              pod["metadata"].get("name"))

    def _bind(self, pod: JSON, node_name: str) -> JSON | None:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        try:
            bound = self.store.bind(ns, name, node_name, meta.get("uid"))
        except ApiError as e:
            if e.code in (404, 409):  # deleted meanwhile, or bound by someone else
                log.debug("binding %s/%s skipped: %s", ns, name, e.message)
                return None
            raise
        self._last_message.pop(_uid(pod), None)
        self.events.record(bound, "Normal", "Scheduled",
                           f"Successfully assigned {ns}/{name} to {node_name}")
        return bound

    def _mark_gated(self, pod: JSON) -> None:
        """Say why a gated pod waits, with the condition the real API server sets."""
        conditions = list((pod.get("status") or {}).get("conditions") or [])
        if any(c.get("type") == "PodScheduled" and c.get("reason") == "SchedulingGated"
               for c in conditions):
            return
        condition = {
            "type": "PodScheduled", "status": "False", "lastProbeTime": None,
            "lastTransitionTime": now_rfc3339(), "reason": "SchedulingGated",
            "message": "Scheduling is blocked due to non-empty scheduling gates",
        }
        conditions = [c for c in conditions if c.get("type") != "PodScheduled"] + [condition]
        meta = pod["metadata"]
        try:
            self._pods[_uid(pod)] = self.store.patch(
                PODS, meta["namespace"], meta["name"],
                {"metadata": {"uid": _uid(pod)}, "status": {"conditions": conditions}},
                "merge", subresource="status")
        except ApiError as e:
            if e.code not in (404, 409):
                raise

    def _unschedulable(self, pod: JSON, message: str) -> None:
        meta = pod["metadata"]
        uid = _uid(pod)
        conditions = list((pod.get("status") or {}).get("conditions") or [])
        current = next((c for c in conditions if c.get("type") == "PodScheduled"), None)
        if not (current and current.get("status") == "False"
                and current.get("reason") == "Unschedulable" and current.get("message") == message):
            # The transition time moves only when the status does, as kube-scheduler keeps it.
            since = (current.get("lastTransitionTime")
                     if current is not None and current.get("status") == "False"
                     else now_rfc3339())
            condition = {
                "type": "PodScheduled",
                "status": "False",
                "lastProbeTime": None,
                "lastTransitionTime": since,
                "reason": "Unschedulable",
                "message": message,
            }
            conditions = [c for c in conditions if c.get("type") != "PodScheduled"] + [condition]
            try:
                updated = self.store.patch(PODS, meta["namespace"], meta["name"],
                                           {"metadata": {"uid": uid},
                                            "status": {"conditions": conditions}},
                                           "merge", subresource="status")
                self._pods[uid] = updated
            except ApiError as e:
                if e.code in (404, 409):
                    return
                raise
        self._last_message[uid] = message
        self.events.record(pod, "Warning", "FailedScheduling", message)
