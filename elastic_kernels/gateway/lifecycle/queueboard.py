"""The GPU queue's shared state in the cluster, so that every replica serves one fair queue.

What is shared, and why there:

* **Who waits.** Each waiting start's pod carries :data:`~elastic_kernels.queueorder.
  QUEUE_ANNOTATION` (user, GPUs and their flavor, since, round), written once by the replica
  that took the start. Every replica already watches the kernel pods (one shared watch), so
  every replica sees every waiter with no extra watch and no polling, and computes the same
  order with :func:`elastic_kernels.queueorder.fair_order`. A waiter leaves when its pod is
  bound or gone, which every replica sees on the same watch.
* **Who ungates: one leader.** Only the replica holding the Lease ``elastic-kernels-gpu-queue``
  lifts the head's gate (each flavor's head, or its first N in the autoscaler mode), whoever's
  start it is. One actor acting on one cache never lets two heads through because two caches
  disagreed for a moment; a waiter whose replica died still gets its turn; and nothing needs a
  read-modify-write per decision. (The alternative, each replica ungating its own waiters when
  they are at the head, needs a shared "whose turn" object updated with optimistic concurrency
  on every turn, and stalls the queue behind a dead replica's waiter.) The Lease uses the verbs
  the gateway's own Lease already has (create, get, patch, delete); it is checked every
  ``duration / 3`` seconds by each replica: one request per replica per period, not per kernel.
  A follower takes over only after it has seen the Lease unchanged for a whole ``duration`` on
  its own clock (as client-go does, so clock skew between replicas does not matter); a leader
  that stops cleanly deletes it.
* **Reclaim, once per waiter.** Idle kernels can only be judged by the replica that holds them
  (their busy/idle state is live there). So any replica with a candidate may reclaim for a
  waiter, but first claims the waiter: a merge patch of :data:`~elastic_kernels.queueorder.
  RECLAIM_ANNOTATION` on the waiter's pod with the pod's resourceVersion from the cache as
  precondition. Of replicas racing for one waiter exactly one wins; the others get 409 and see
  the claim on the watch. A reclaim that loses its own race (the kernel got busy) removes the
  claim, so another may try.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import JSON, LEASES, PODS, KubeClient, KubeError
from elastic_kernels.kube.informer import Informer
from elastic_kernels.leases import format_micro_time
from elastic_kernels.queueorder import (QUEUE_ANNOTATION, RECLAIM_ANNOTATION, QueueEntry,
                                        entry_from_pod, queue_annotation)
from elastic_kernels.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: The Lease whose holder ungates for every replica of the namespace.
LEADER_LEASE = "elastic-kernels-gpu-queue"
COMPONENT_GPU_QUEUE = "gpu-queue"


class QueueLeader:
    """Holds, or waits for, the GPU queue's Lease; ``leading`` says whether this replica ungates.

    Timers, not watches: a Lease read per period per replica (RBAC grants get, not watch).
    """

    def __init__(self, client: KubeClient, namespace: str, identity: str, *,
                 duration: float = 15.0, on_lead: Callable[[], None] = lambda: None) -> None:
        self.client = client
        self.namespace = namespace
        self.identity = identity
        self.duration = duration
        self.on_lead = on_lead
        #: Called too when this replica becomes the leader: leader-only writers elsewhere (warm
        #: pools, image pre-pulling) look again then.
        self._also_on_lead: list[Callable[[], None]] = []
        self._renewed_at: float | None = None  # loop time of our last successful write
        self._seen: tuple[Any, ...] | None = None  # the foreign Lease as last read
        self._seen_at = 0.0  # loop time it last changed
        self._uid = ""
        self._task: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        """Whether this replica wrote the Lease within its duration (so nobody else took it)."""
        if self._renewed_at is None:
            return False
        return asyncio.get_running_loop().time() - self._renewed_at < self.duration

    def _spec(self, acquired: bool) -> JSON:
        now = format_micro_time(datetime.now(timezone.utc))
        spec: JSON = {"holderIdentity": self.identity,
                      "leaseDurationSeconds": max(1, int(self.duration)), "renewTime": now}
        if acquired:
            spec["acquireTime"] = now
        return spec

    async def try_once(self) -> None:
        """Create, renew or take over the Lease, or note that someone else holds it."""
        loop = asyncio.get_running_loop()
        was = self.leading
        try:
            lease = await self.client.get(LEASES, LEADER_LEASE, self.namespace)
        except KubeError as e:
            if not e.not_found:
                raise
            await self._create()
        else:
            await self._renew_or_take(lease, loop.time())
        if self.leading and not was:
            log.info("GPU queue: this replica (%s) now ungates for the namespace", self.identity)
            self.on_lead()
            for callback in list(self._also_on_lead):
                callback()

    def also_on_lead(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` as well whenever this replica becomes the leader."""
        self._also_on_lead.append(callback)

    async def _create(self) -> None:
        body: JSON = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": LEADER_LEASE, "namespace": self.namespace,
                         "labels": {R.LABEL_MANAGED_BY: R.MANAGED_BY,
                                    R.LABEL_COMPONENT: COMPONENT_GPU_QUEUE}},
            "spec": {**self._spec(True), "leaseTransitions": 0},
        }
        try:
            created = await self.client.create(LEASES, body, self.namespace)
        except KubeError as e:
            if e.already_exists:
                return  # another replica was first; the next try reads it
            raise
        self._held(created)

    async def _renew_or_take(self, lease: JSON, now: float) -> None:
        meta = lease.get("metadata") or {}
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder != self.identity:
            self._renewed_at = None
            seen = (holder, spec.get("renewTime"), meta.get("resourceVersion"))
            if seen != self._seen:
                self._seen, self._seen_at = seen, now
            if holder and now - self._seen_at < self.duration:
                return  # held, and renewed within its duration as far as we can tell
        patch: JSON = {"metadata": {"resourceVersion": meta.get("resourceVersion")},
                       "spec": self._spec(holder != self.identity)}
        if holder != self.identity:
            patch["spec"]["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        try:
            self._held(await self.client.patch(LEASES, LEADER_LEASE, patch, self.namespace))
        except KubeError as e:
            if not (e.conflict or e.not_found):
                raise
            self._renewed_at = None  # someone else wrote it first: read again next time

    def _held(self, lease: JSON) -> None:
        self._uid = str((lease.get("metadata") or {}).get("uid") or "")
        self._renewed_at = asyncio.get_running_loop().time()

    async def start(self) -> None:
        try:
            await self.try_once()
        except KubeError as e:
            log.warning("GPU queue: could not read the leader Lease (retrying): %s", e)
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        period = max(0.2, self.duration / 3.0)
        while True:
            await asyncio.sleep(period)
            try:
                await self.try_once()
            except KubeError as e:
                log.warning("GPU queue: could not renew or read the leader Lease: %s", e)
            except Exception:
                log.exception("GPU queue: leader election failed")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._renewed_at is None:
            return
        self._renewed_at = None
        try:  # let a follower take over at its next look instead of after the duration
            await self.client.delete(LEASES, LEADER_LEASE, self.namespace,
                                     preconditions={"uid": self._uid} if self._uid else None)
        except KubeError as e:
            if not (e.not_found or e.conflict):
                log.info("GPU queue: could not release the leader Lease: %s", e)


class ClusterQueueBoard:
    """The shared view the GPU queue reads and writes (see the module docstring)."""

    def __init__(self, client: KubeClient, pods: Informer, namespace: str, gateway_id: str, *,
                 lease_duration: float = 15.0) -> None:
        self.client = client
        self.pods = pods
        self.namespace = namespace
        # Unique per process: two processes under one gateway id must not both lead.
        identity = f"{gateway_id}-{secrets.token_hex(3)}"
        self.leader = QueueLeader(client, namespace, identity, duration=lease_duration)
        self._unlisten: Callable[[], None] | None = None

    def entries(self) -> list[QueueEntry]:
        """Every waiting start of the namespace, from the pod watch."""
        return [e for e in map(entry_from_pod, self.pods.items()) if e is not None]

    def leading(self) -> bool:
        return self.leader.leading

    def subscribe(self, changed: Callable[[], None]) -> None:
        """Call ``changed`` on every pod event that may move the queue."""
        def relevant(pod: JSON | None) -> bool:
            if not pod:
                return False
            annotations = (pod.get("metadata") or {}).get("annotations") or {}
            return QUEUE_ANNOTATION in annotations or bool((pod.get("spec") or {})
                                                          .get("schedulingGates"))

        def listener(event_type: str, obj: JSON, old: JSON | None) -> None:
            if relevant(obj) or relevant(old) or _unschedulable(obj):
                changed()

        self.leader.on_lead = changed
        self._unlisten = self.pods.add_listener(listener)

    async def start(self) -> None:
        await self.leader.start()

    async def stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        await self.leader.stop()

    def _pod(self, namespace: str, pod_name: str) -> JSON | None:
        return self.pods.get(pod_name, namespace)

    async def publish(self, kernel_id: str, user: str, gpus: int, namespace: str, pod_name: str,
                      since: datetime, round_: int, resource: str = R.GPU_RESOURCE) -> bool:
        """Write a waiter onto its pod, once; False while the pod is not in the cache yet (its
        ADDED event brings the queue back here)."""
        pod = self._pod(namespace, pod_name)
        if pod is None:
            return False
        value = queue_annotation(kernel_id, user, gpus, since, round_, resource)
        if ((pod.get("metadata") or {}).get("annotations") or {}).get(QUEUE_ANNOTATION) == value:
            return True
        try:
            await self.client.patch(PODS, pod_name, {
                "metadata": {"annotations": {QUEUE_ANNOTATION: value}}}, namespace)
        except KubeError as e:
            if e.not_found:
                return True  # gone: nothing to publish, the start ends on its own
            raise
        return True

    async def claim(self, namespace: str, pod_name: str, victim: str) -> bool:
        """Mark the waiter's pod as reclaimed-for, if nobody has; True when this replica won."""
        pod = self._pod(namespace, pod_name)
        meta = (pod or {}).get("metadata") or {}
        if pod is None or (meta.get("annotations") or {}).get(RECLAIM_ANNOTATION):
            return False
        try:
            await self.client.patch(PODS, pod_name, {"metadata": {
                "resourceVersion": meta.get("resourceVersion"),
                "annotations": {RECLAIM_ANNOTATION: victim}}}, namespace)
        except KubeError as e:
            if e.conflict or e.not_found:
                return False  # changed (another replica's claim?) or gone: the watch says
            raise
        return True

    async def unclaim(self, namespace: str, pod_name: str) -> None:
        """Remove this replica's claim after its reclaim failed, so another may try."""
        try:
            await self.client.patch(PODS, pod_name, {"metadata": {
                "annotations": {RECLAIM_ANNOTATION: None}}}, namespace)
        except KubeError as e:
            if not e.not_found:
                log.info("GPU queue: could not withdraw the reclaim claim on %s: %s",
                         pod_name, e)


def _unschedulable(pod: JSON) -> bool:
    for condition in (pod.get("status") or {}).get("conditions") or ():
        if isinstance(condition, dict) and condition.get("reason") == "Unschedulable":
            return True
    return False
