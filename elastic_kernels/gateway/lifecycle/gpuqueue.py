"""The fair GPU queue: who gets the next free GPU, and whose idle GPU is reclaimed for them.

Kubernetes serves pending pods first come, first served, so one user who asks for ten GPU kernels
would starve everyone behind them. The gateway keeps its own queue instead:

* A GPU kernel that arrives while others already wait gets its pod created with a *scheduling
  gate* (``spec.schedulingGates``, Pod scheduling readiness): the scheduler ignores it until the
  gateway removes the gate. Only the head of the queue is ungated, so the order is ours.
* The order is round-robin across users: a waiting kernel's rank is the number of the same
  user's kernels already waiting when it arrived; ties go by arrival. User A's five starts and
  user B's one, queued in that order, are served A, B, A, A, A, A.
* While the head waits for capacity, the gateway reclaims one idle GPU kernel for it: the one
  idle longest among those past their kernelspec's ``reclaimAfter``, never a busy one (see
  :func:`elastic_kernels.culling.reclaim_candidates`). The scheduler then binds the head into the
  freed capacity, which is seen on the pod watch; the next waiter becomes the head.
* Each waiting kernel's JupyterKernel status says where it stands ("waiting for 1 nvidia.com/gpu:
  2nd in queue"); it is rewritten only when that text changes.

**GPU flavors (issue 16).** A waiter waits for one extended resource, its *flavor*: whole GPUs
(``nvidia.com/gpu``), a MIG profile (``nvidia.com/mig-1g.10gb``), a time-sliced share
(``nvidia.com/gpu.shared``), ... (which names count is ``kube.resources.GpuFlavors``). Each
flavor is its own queue, with its own head, rounds and positions ("waiting for 1
nvidia.com/mig-1g.10gb: 2nd in queue"), because capacity of one flavor can never serve another:
a MIG waiter must not hold up whole-GPU starts behind it, nor be ungated into capacity it cannot
use. Reclaim likewise frees only a kernel holding the waiter's flavor (``victim_flavor``): an
idle whole GPU shut down for a MIG waiter would be a kernel lost for nothing.

**Autoscaler mode.** A gated pod is invisible to cluster autoscalers (Cluster Autoscaler and
Karpenter skip pods with scheduling gates), so with only the head ungated a cluster never grows
for its queue. ``ungated`` > 1 leaves the first N waiters of each flavor ungated
(:func:`elastic_kernels.queueorder.heads`): the autoscaler sees N unschedulable pods and adds
nodes. The order then holds between the window and the waiters behind it (they stay gated);
inside the window, whichever pod the scheduler places first when capacity appears gets it.
We ungate in fair order, and kube-scheduler tries pods of equal priority in the order they
entered its queue, so the head usually goes first, but a reclaim or a node that frees room
between two attempts may go to the second of the window: at most N-1 places of unfairness,
traded for a cluster that grows.

Everything here is driven by events (a start joining, a scheduler verdict, a pod binding); nothing
polls.

**One queue across replicas (issue 14).** Given a board (:meth:`GpuQueue.share`; in the gateway
:class:`~.queueboard.ClusterQueueBoard`), the queue is the namespace's, not this replica's:

* the replica that takes a start writes it onto its pod once (user, GPUs, since, round); every
  replica reads every waiter from its shared pod watch and orders them with the same pure
  function (:mod:`elastic_kernels.queueorder`), so positions, the ``/api/elastic/status``
  listing and each kernel's queue fields agree whichever replica answers;
* only the replica holding the queue's Lease ungates the head, whoever's start it is (one actor
  on one cache: never two heads let through; see :mod:`.queueboard` for why a leader rather
  than each replica ungating its own waiters through a conditional update);
* a replica holding an idle kernel reclaims it for a waiter only after claiming that waiter
  with a conditional write on its pod, so each waiter gets one reclaim, not one per replica;
* each replica writes the position onto the records of its own waiters only.

Without a board (the unit tests, the day simulation) the queue is this process's alone and
behaves the same with one replica.

The queue is given what it needs and nothing more (issue 12): who may be reclaimed
(``reclaim_candidates``, the culler's view through the culling policy), how to reclaim one
(``reclaim``, the culler's cull), how to lift a pod's gate and how to record a waiter's position
(by default through the Kubernetes API: :func:`ungate_pod`, :func:`report_position`), and a
clock. So its order and its reclaim choices run unchanged without a cluster, on a virtual
clock: ``tests/test_gpuqueue_unit.py`` and the day simulation (``bench/bench_day.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from elastic_kernels.culling.policy import CullDecision
from elastic_kernels.kube import records
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import PODS, KubeError
from elastic_kernels.kube.connection import ClusterConnection
from elastic_kernels.provisioner.gates import GPU_QUEUE_GATE  # noqa: F401 (the gate it lifts)
from elastic_kernels.queueorder import QueueEntry, by_flavor, heads, order_key, round_for
from elastic_kernels.tasks import cancel_and_wait

from .queueboard import ClusterQueueBoard

log = logging.getLogger(__name__)


def ordinal(n: int) -> str:
    if 10 <= n % 100 <= 20:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass
class Waiter:
    kernel_id: str
    user: str
    gpus: int
    namespace: str
    pod_name: str
    seq: int
    rank: int
    since: datetime
    gated: bool
    unschedulable: str = ""
    reclaimed: str = ""
    reported: str = field(default="", repr=False)
    #: The idle kernel another replica reclaimed for this one (from the board).
    claimed: str = ""
    #: Whether the board shows it (its pod carries the entry); only this replica's starts.
    published: bool = field(default=False, repr=False)
    #: Whether the board has shown it (so its absence there means bound or gone).
    shown: bool = field(default=False, repr=False)
    #: Whether this replica took the start (else it is another replica's, seen on the board).
    local: bool = field(default=True, repr=False)
    #: The GPU flavor (extended resource) it waits for.
    resource: str = R.GPU_RESOURCE

    @property
    def reclaimed_for(self) -> str:
        return self.reclaimed or self.claimed

    @classmethod
    def seen(cls, entry: QueueEntry) -> Waiter:
        """Another replica's waiter, as the board shows it."""
        return cls(entry.kernel_id, entry.user, entry.gpus, entry.namespace, entry.pod_name, -1,
                   entry.round, entry.since, entry.gated, entry.unschedulable,
                   claimed=entry.reclaimed, published=True, local=False,
                   resource=entry.resource)

    def model(self, position: int) -> dict[str, Any]:
        return {
            "kernel_id": self.kernel_id,
            "user": self.user,
            "gpus": self.gpus,
            "resource": self.resource,
            "position": position,
            "waiting_since": records.format_timestamp(self.since),
            "gated": self.gated,
            "scheduler": self.unschedulable,
            # Whether an idle kernel was reclaimed for this one; whose it was is for admins only
            # (KernelOwnership.status_for removes reclaimed_kernel for everyone else).
            "reclaimed": bool(self.reclaimed_for),
            "reclaimed_kernel": self.reclaimed_for or None,
        }


async def ungate_pod(waiter: Waiter) -> bool:
    """Remove the pod's scheduling gate through the API; False when the pod is gone."""
    try:
        await ClusterConnection.instance().client.patch(
            PODS, waiter.pod_name, {"spec": {"schedulingGates": None}}, waiter.namespace)
    except KubeError as e:
        if e.not_found:
            return False
        raise
    return True


async def report_position(waiter: Waiter, status: dict[str, Any]) -> None:
    """Write a waiter's place in the queue onto its JupyterKernel (best effort: the queue works
    without it; the record only tells ``kubectl`` and other replicas)."""
    try:
        await records.patch_kernel_status(ClusterConnection.instance().client,
                                          R.kernel_object_name(waiter.kernel_id),
                                          waiter.namespace, status)
    except KubeError as e:
        log.info("GPU queue: could not record the position of %s: %s", waiter.kernel_id, e)


class QueueBoard(Protocol):
    """The queue's shared state: every replica's waiters, and who ungates (``queueboard.py``)."""

    def entries(self) -> Sequence[QueueEntry]:
        """Every waiting start the cluster shows (this replica's included, once published)."""

    def leading(self) -> bool:
        """Whether this replica ungates the head."""

    def subscribe(self, changed: Callable[[], None]) -> None:
        """Call ``changed`` whenever the entries or the leadership may have changed."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, kernel_id: str, user: str, gpus: int, namespace: str, pod_name: str,
                      since: datetime, round_: int, resource: str = R.GPU_RESOURCE) -> bool:
        """Show a waiter of this replica to all (False: its pod is not visible yet)."""

    async def claim(self, namespace: str, pod_name: str, victim: str) -> bool:
        """Claim the waiter for a reclaim; False when someone else has, or it changed."""

    async def unclaim(self, namespace: str, pod_name: str) -> None:
        """Withdraw this replica's claim (its reclaim failed)."""


class GpuQueue:
    """The queue of kernel starts waiting for GPUs: this gateway's, or with a board, the
    namespace's."""

    def __init__(
        self,
        *,
        reclaim_candidates: Callable[[], Sequence[CullDecision]],
        reclaim: Callable[[CullDecision], Awaitable[bool]],
        ungate: Callable[[Waiter], Awaitable[bool]] = ungate_pod,
        report: Callable[[Waiter, dict[str, Any]], Awaitable[None]] = report_position,
        clock: records.Clock = time.time,
        victim_flavor: Callable[[CullDecision], str] | None = None,
        ungated: int = 1,
    ) -> None:
        if ungated < 1:
            raise ValueError(f"the GPU queue must leave at least its head ungated, not {ungated}")
        #: Idle GPU kernels that may be shut down for a waiter, best first (the culler's
        #: :meth:`~.culler.GatewayCuller.reclaim_candidates`).
        self.reclaim_candidates = reclaim_candidates
        #: Carry one reclaim out; False when it lost a race (the culler's ``cull``).
        self.reclaim = reclaim
        self.ungate = ungate
        self.report = report
        self.clock = clock
        #: The GPU flavor a reclaim candidate holds (None: every candidate holds whole GPUs).
        self.victim_flavor = victim_flavor
        #: Waiters of each flavor left ungated from the head of the order (see the autoscaler
        #: mode in the module docstring).
        self.ungated = ungated
        self._waiters: dict[str, Waiter] = {}
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._task: asyncio.Task[None] | None = None
        self._claimed: set[str] = set()  # kernels already chosen for reclaim
        #: The namespace's view (None: this process alone), see :meth:`share`.
        self.board: QueueBoard | None = None
        self._ungated: set[tuple[str, str]] = set()  # (kernel, pod) we ungated, until seen
        self._last_since: datetime | None = None
        #: Told how long each waiter waited, in seconds, when it leaves (the gateway's metrics;
        #: set by ElasticGatewayApp).
        self.on_wait_ended: Callable[[float], None] | None = None

    def __repr__(self) -> str:
        # The queue travels in a start's keyword arguments, which jupyter_server logs at DEBUG.
        return f"<GpuQueue: {len(self._waiters)} waiting>"

    def __len__(self) -> int:
        """Starts waiting at this replica (the metrics' queue length: summed over replicas it
        is the namespace's)."""
        return len(self._waiters)

    async def share(self, board: QueueBoard) -> None:
        """Serve the namespace's one queue through ``board`` from now on (the gateway calls
        this once its watches run)."""
        self.board = board
        board.subscribe(self._changed)
        await board.start()
        self._changed()

    async def share_cluster(self, gateway_id: str, namespace: str | None = None) -> None:
        """:meth:`share` the namespace's queue through the cluster (pod watch and a Lease);
        once."""
        if self.board is not None:
            return
        conn = ClusterConnection.instance()
        ns = namespace or conn.default_namespace
        pods = await conn.informer(PODS, ns, label_selector=R.KERNEL_POD_SELECTOR)
        await self.share(ClusterQueueBoard(conn.client, pods, ns, gateway_id))

    # -- membership (called by the provisioner on the event loop) ----------------------------

    def has_waiting(self, resource: str | None = None) -> bool:
        """Whether a new GPU kernel of ``resource`` (None: any flavor) must queue behind others
        (then its pod starts gated)."""
        return any(w.gated or w.unschedulable for w in self.ordered(resource))

    def enqueue(self, kernel_id: str, user: str, gpus: int, namespace: str, pod_name: str,
                *, gated: bool, resource: str = R.GPU_RESOURCE) -> Waiter:
        waiter = self._waiters.get(kernel_id)
        if waiter is None:
            # The rank is fixed on arrival: how many of this user's starts are already waiting
            # for the same flavor (every replica's, with a board).
            rank = round_for(user, (w.user for w in self.ordered(resource)))
            waiter = Waiter(kernel_id, user, gpus, namespace, pod_name, next(self._seq), rank,
                            self._arrival(), gated, resource=resource)
            self._waiters[kernel_id] = waiter
        if waiter.pod_name != pod_name:
            waiter.pod_name = pod_name
            waiter.published = waiter.shown = False
        self._changed()
        return waiter

    def _arrival(self) -> datetime:
        """Now, but strictly after this replica's previous arrival: the time a wait began is
        what orders a user's starts on every replica, so two of ours must never tie."""
        now = records.utc_now(self.clock)
        if self._last_since is not None and now <= self._last_since:
            now = self._last_since + timedelta(microseconds=1)
        self._last_since = now
        return now

    def unschedulable(self, kernel_id: str, user: str, gpus: int, namespace: str,
                      pod_name: str, message: str, resource: str = R.GPU_RESOURCE) -> None:
        """The scheduler found no room: the kernel waits (joining the queue if it had not)."""
        waiter = self.enqueue(kernel_id, user, gpus, namespace, pod_name, gated=False,
                              resource=resource)
        waiter.unschedulable = message

    def leave(self, kernel_id: str) -> None:
        """The kernel's pod was bound, or its start ended: the next one may go."""
        waiter = self._waiters.pop(kernel_id, None)
        if waiter is None:
            return
        if self.on_wait_ended is not None:
            self.on_wait_ended(max(0.0, self.clock() - waiter.since.timestamp()))
        self._changed()

    def is_waiting(self, kernel_id: str) -> bool:
        return any(w.kernel_id == kernel_id for w in self.ordered())

    # -- order --------------------------------------------------------------------------------

    def ordered(self, resource: str | None = None) -> list[Waiter]:
        """Round-robin across users, arrival order within a round; every replica's starts, with
        a board (:func:`elastic_kernels.queueorder.order_key`, the same on every replica). Only
        the waiters of ``resource`` when given (each flavor's queue is its own).

        A start's round is fixed when it arrives (its user's starts already waiting), so a user
        who was just served does not jump back ahead of one who was not.
        """
        merged: dict[str, Waiter] = {}
        if self.board is not None:
            for entry in self.board.entries():
                merged[entry.kernel_id] = Waiter.seen(entry)
        for waiter in self._waiters.values():
            seen = merged.get(waiter.kernel_id)
            if seen is not None and seen.pod_name == waiter.pod_name:
                waiter.gated = waiter.gated and seen.gated  # the leader may have ungated it
                waiter.claimed = seen.claimed
                waiter.published = waiter.shown = True
            elif waiter.shown and self.board is not None:
                continue  # bound or gone on the watch; its start leaves in a moment
            merged[waiter.kernel_id] = waiter
        if self._ungated:
            self._ungated &= {(w.kernel_id, w.pod_name) for w in merged.values()}
            for waiter in merged.values():
                if (waiter.kernel_id, waiter.pod_name) in self._ungated:
                    waiter.gated = False  # ours did it; the watch has not shown it yet
        waiters = merged.values() if resource is None else [
            w for w in merged.values() if w.resource == resource]
        return sorted(waiters, key=lambda w: order_key(w.rank, w.since, w.kernel_id))

    def positioned(self) -> list[tuple[Waiter, int]]:
        """Every waiter in order with its position in its own flavor's queue."""
        counts: dict[str, int] = {}
        out = []
        for waiter in self.ordered():
            counts[waiter.resource] = counts.get(waiter.resource, 0) + 1
            out.append((waiter, counts[waiter.resource]))
        return out

    def waiting_by_flavor(self) -> dict[str, int]:
        """Starts waiting at this replica, per GPU flavor (the metrics' queue lengths)."""
        counts: dict[str, int] = {}
        for waiter in self._waiters.values():
            counts[waiter.resource] = counts.get(waiter.resource, 0) + 1
        return counts

    def position(self, kernel_id: str) -> int | None:
        for waiter, position in self.positioned():
            if waiter.kernel_id == kernel_id:
                return position
        return None

    def describe(self, kernel_id: str) -> str:
        for waiter, position in self.positioned():
            if waiter.kernel_id == kernel_id:
                return self._describe(waiter, position)
        return ""

    @staticmethod
    def _describe(waiter: Waiter, position: int) -> str:
        what = f"{waiter.gpus} {waiter.resource}"
        text = f"waiting for {what}: {ordinal(position)} in queue"
        if waiter.reclaimed_for:
            text += " (an idle GPU kernel was reclaimed for it)"
        return text

    def snapshot(self) -> list[dict[str, Any]]:
        return [w.model(i) for w, i in self.positioned()]

    def poke(self) -> None:
        """Look again (the culler's timer calls this: idle kernels become reclaimable)."""
        if any(w.unschedulable and not w.gated and not w.reclaimed_for
               for w in self.ordered()):
            self._changed()

    # -- the reconciler -------------------------------------------------------------------------

    def _changed(self) -> None:
        self._wake.set()
        self._quiet.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while self._waiters or self._wake.is_set():
                await self._wake.wait()
                self._wake.clear()
                try:
                    await self.reconcile()
                except Exception:
                    log.exception("GPU queue: reconcile failed")
                if not self._wake.is_set():
                    self._quiet.set()
        finally:
            self._quiet.set()

    async def settled(self) -> None:
        """Return once the reconciler has acted on every change so far.

        The gateway never waits for it; tests and the day simulation do, instead of sleeping:
        with instant fakes for the cluster calls the queue then has done all it will do.
        """
        while not self._quiet.is_set():
            await self._quiet.wait()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self._quiet.set()
        board, self.board = self.board, None
        if board is not None:
            await board.stop()

    def _leading(self) -> bool:
        return self.board is None or self.board.leading()

    async def reconcile(self) -> None:
        await self._publish()
        positioned = self.positioned()
        await asyncio.gather(*(self._report(w, i) for w, i in positioned if w.local))
        if not positioned:
            return
        order = [w for w, _ in positioned]
        if self._leading():
            for flavor_order in by_flavor(order, lambda w: w.resource).values():
                for waiter in heads(flavor_order, self.ungated):
                    if waiter.gated:
                        await self._ungate(waiter)
        await self._reclaim_for_waiters(order)

    async def _publish(self) -> None:
        """Show this replica's new waiters to the others (once each; see queueboard.py)."""
        board = self.board
        if board is None:
            return
        for waiter in [w for w in self._waiters.values() if not w.published]:
            try:
                waiter.published = await board.publish(
                    waiter.kernel_id, waiter.user, waiter.gpus, waiter.namespace,
                    waiter.pod_name, waiter.since, waiter.rank, waiter.resource)
            except KubeError as e:
                log.warning("GPU queue: could not publish %s: %s", waiter.kernel_id, e)

    async def _report(self, waiter: Waiter, position: int) -> None:
        text = self._describe(waiter, position)
        if text == waiter.reported:
            return
        waiter.reported = text
        await self.report(waiter, {"phase": R.PHASE_PENDING, "reason": "QueuedForGPU",
                                   "message": text, "queuePosition": position,
                                   "podName": waiter.pod_name})

    async def _ungate(self, waiter: Waiter) -> None:
        try:
            ungated = await self.ungate(waiter)
        except KubeError as e:
            log.warning("GPU queue: could not ungate %s: %s", waiter.pod_name, e)
            return
        if not ungated:
            self.leave(waiter.kernel_id)  # its pod is gone: the start ends on its own
            return
        waiter.gated = False
        self._ungated.add((waiter.kernel_id, waiter.pod_name))
        log.info("GPU queue: %s (%s) is next; its pod may now be scheduled",
                 waiter.kernel_id, waiter.user)

    def _flavor(self, decision: CullDecision) -> str:
        return self.victim_flavor(decision) if self.victim_flavor else R.GPU_RESOURCE

    async def _reclaim_for_waiters(self, order: list[Waiter]) -> None:
        """One reclaim per waiting start whose pod the scheduler could not place, each from
        the idle kernels of the waiter's own flavor (best first)."""
        needy = [w for w in order if not w.gated and w.unschedulable and not w.reclaimed_for]
        if not needy:
            return
        candidates = by_flavor((d for d in self.reclaim_candidates()
                                if d.kernel.kernel_id not in self._claimed), self._flavor)
        for waiter in needy:
            of_flavor = candidates.get(waiter.resource)
            if not of_flavor:
                continue
            decision = of_flavor.pop(0)
            victim = decision.kernel.kernel_id
            if self.board is not None and not await self.board.claim(
                    waiter.namespace, waiter.pod_name, victim):
                continue  # another replica reclaims for it, or its pod moved on (the watch says)
            self._claimed.add(victim)
            waiter.reclaimed = victim
            log.warning("GPU queue: reclaiming kernel %s of %s for %s of %s: %s", victim,
                        decision.kernel.user, waiter.kernel_id, waiter.user, decision.message)
            try:
                culled = await self.reclaim(decision)
            finally:
                self._claimed.discard(victim)
            if not culled:
                waiter.reclaimed = ""  # someone else got there first; try another next time
                if self.board is not None:
                    await self.board.unclaim(waiter.namespace, waiter.pod_name)
            waiter.reported = ""  # the message mentions the reclaim
