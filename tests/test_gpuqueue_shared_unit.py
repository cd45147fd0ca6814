"""One fair GPU queue across replicas, without a cluster: two queues on one fake board.

The board stands in for the cluster (``gateway/lifecycle/queueboard.py``): waiting pods with
their queue entries, a resourceVersion per pod for the conditional reclaim claim, and which
replica holds the queue's Lease. Every write notifies both queues, as the shared pod watch does.
Nothing sleeps: :meth:`GpuQueue.settled` returns once a queue has done all it will do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

import pytest

from elastic_kernels.gateway.lifecycle.gpuqueue import GpuQueue, Waiter
from elastic_kernels.queueorder import (QueueEntry, entry_from_pod, fair_order, format_since,
                                        queue_annotation, QUEUE_ANNOTATION, RECLAIM_ANNOTATION)

from .test_gpuqueue_unit import Clock, Cluster

pytestmark = pytest.mark.timeout(30)


@dataclass
class Pods:
    """The cluster's waiting pods, as every replica's watch would show them."""

    entries: dict[str, QueueEntry] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    listeners: list[Callable[[], None]] = field(default_factory=list)
    leader: str = "a"
    claims: list[tuple[str, str]] = field(default_factory=list)

    def changed(self, pod_name: str) -> None:
        self.versions[pod_name] = self.versions.get(pod_name, 0) + 1
        for listener in list(self.listeners):
            listener()

    def bind(self, kernel_id: str) -> None:
        """The scheduler bound the kernel's pod: it no longer waits."""
        entry = self.entries.pop(kernel_id)
        self.changed(entry.pod_name)

    def ungate(self, kernel_id: str) -> None:
        entry = self.entries[kernel_id]
        self.entries[kernel_id] = replace(entry, gated=False)
        self.changed(entry.pod_name)



@dataclass
class Board:
    pods: Pods
    name: str
    gated: dict[str, bool] = field(default_factory=dict)

    def entries(self) -> Sequence[QueueEntry]:
        return list(self.pods.entries.values())

    def leading(self) -> bool:
        return self.pods.leader == self.name

    def subscribe(self, changed: Callable[[], None]) -> None:
        self.pods.listeners.append(changed)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def publish(self, kernel_id: str, user: str, gpus: int, namespace: str, pod_name: str,
                      since: datetime, round_: int, resource: str = "nvidia.com/gpu") -> bool:
        gated = self.gated.get(kernel_id, True)
        # An ungated waiter joined because the scheduler found no room; its pod says so.
        self.pods.entries[kernel_id] = QueueEntry(
            kernel_id, user, gpus, since, round_, namespace, pod_name, gated=gated,
            unschedulable="" if gated else "no room", resource=resource)
        self.pods.changed(pod_name)
        return True

    async def claim(self, namespace: str, pod_name: str, victim: str) -> bool:
        entry = next(e for e in self.pods.entries.values() if e.pod_name == pod_name)
        if entry.reclaimed:
            return False
        self.pods.entries[entry.kernel_id] = replace(entry, reclaimed=victim)
        self.pods.claims.append((self.name, victim))
        self.pods.changed(pod_name)
        return True

    async def unclaim(self, namespace: str, pod_name: str) -> None:
        entry = next(e for e in self.pods.entries.values() if e.pod_name == pod_name)
        self.pods.entries[entry.kernel_id] = replace(entry, reclaimed="")
        self.pods.changed(pod_name)


async def replicas(clock: Clock | None = None) -> tuple[Pods, dict[str, tuple[GpuQueue,
                                                                               Cluster]]]:
    clock = clock or Clock()
    pods = Pods()
    found = {}
    for name in ("a", "b"):
        cluster = Cluster(clock)
        queue = GpuQueue(reclaim_candidates=cluster.candidates, reclaim=cluster.reclaim,
                         ungate=cluster.ungate, report=cluster.report, clock=clock)
        await queue.share(Board(pods, name))
        found[name] = (queue, cluster)
    return pods, found


def join(queue: GpuQueue, kernel_id: str, user: str, *, gated: bool = True) -> None:
    board = queue.board
    assert isinstance(board, Board)
    board.gated[kernel_id] = gated  # what its pod will show
    if gated:
        queue.enqueue(kernel_id, user, 1, "default", f"pod-{kernel_id}", gated=True)
    else:
        queue.unschedulable(kernel_id, user, 1, "default", f"pod-{kernel_id}", "no room")


async def settle(*queues: GpuQueue) -> None:
    for _ in range(3):  # one queue's writes wake the other
        for queue in queues:
            await queue.settled()


def order(queue: GpuQueue) -> list[str]:
    return [w.kernel_id for w in queue.ordered()]


async def test_both_replicas_compute_one_order_and_the_same_positions() -> None:
    clock = Clock()
    pods, rs = await replicas(clock)
    (qa, ca), (qb, cb) = rs["a"], rs["b"]
    join(qa, "a0", "alice", gated=False)  # the first waits for the scheduler, ungated
    await settle(qa, qb)
    for kernel_id, user, queue in [("a1", "alice", qb), ("b0", "bob", qa), ("a2", "alice", qa),
                                   ("b1", "bob", qb)]:
        clock.now += 1
        assert queue.has_waiting()  # seen from either replica: the new pod starts gated
        join(queue, kernel_id, user)
        await settle(qa, qb)
    assert order(qa) == order(qb) == ["a0", "b0", "a1", "b1", "a2"]
    assert qa.snapshot() == qb.snapshot()
    assert [qa.position(k) for k in ("a1", "b1")] == [qb.position(k) for k in ("a1", "b1")]
    assert qb.describe("a2") == qa.describe("a2") == "waiting for 1 nvidia.com/gpu: 5th in queue"
    # Each replica writes the positions of its own starts only.
    assert {k for k, _ in ca.reports} == {"a0", "b0", "a2"}
    assert {k for k, _ in cb.reports} == {"a1", "b1"}
    assert len(qa) == 3 and len(qb) == 2

    # Only the leader ungates, in the one order, whoever took the start.
    ungated: list[str] = []
    for _ in range(4):
        served = order(qa)[0]
        pods.bind(served)
        for queue in (qa, qb):
            queue.leave(served)  # its start's provisioner saw the binding (a no-op elsewhere)
        await settle(qa, qb)
        head = order(qa)[0]
        assert (ca.ungated + cb.ungated)[-1] == head
        ungated.append(head)
        pods.ungate(head)  # as the watch shows the leader's patch
        await settle(qa, qb)
    assert ungated == ["b0", "a1", "b1", "a2"]
    assert cb.ungated == [] and ca.ungated == ungated
    await qa.stop()
    await qb.stop()


async def test_a_new_leader_takes_over_and_reclaim_happens_once() -> None:
    pods, rs = await replicas()
    (qa, ca), (qb, cb) = rs["a"], rs["b"]
    join(qa, "w0", "carol", gated=False)
    await settle(qa, qb)
    join(qb, "w1", "dave")
    pods.leader = "b"  # a stopped; b holds the Lease now
    await settle(qa, qb)
    # Both replicas hold an idle GPU kernel past reclaimAfter.
    ca.running("idle-a", idle=600)
    cb.running("idle-b", idle=900)
    qa.poke()
    await settle(qa, qb)
    assert len(pods.claims) == 1  # one reclaim for the one needy waiter, not one per replica
    assert ca.reclaimed + cb.reclaimed == [pods.claims[0][1]]
    assert qa.snapshot() == qb.snapshot() and qa.snapshot()[0]["reclaimed"] is True
    pods.bind("w0")
    await settle(qa, qb)
    assert cb.ungated == ["w1"] and ca.ungated == []
    await qa.stop()
    await qb.stop()


async def test_a_lost_reclaim_is_withdrawn_and_tried_again() -> None:
    pods, rs = await replicas()
    (qa, ca), (qb, cb) = rs["a"], rs["b"]
    join(qa, "w0", "carol", gated=False)
    await settle(qa, qb)
    ca.running("idle-a", idle=600)
    cb.running("idle-b", idle=600)
    ca.lose_races = cb.lose_races = 1  # each first pick turned busy before its cull
    qa.poke()
    await settle(qa, qb)
    # Each lost race withdrew its claim, which woke the replicas to try again: two claims were
    # withdrawn, and exactly one reclaim went through, the one the pod shows.
    assert len(pods.claims) == 3
    assert len(ca.reclaimed + cb.reclaimed) == 1
    assert pods.entries["w0"].reclaimed == (ca.reclaimed + cb.reclaimed)[0]
    await qa.stop()
    await qb.stop()


def test_entries_round_trip_through_pods() -> None:
    since = datetime.fromisoformat("2024-05-01T09:00:00.000123+00:00")
    pod = {"metadata": {"name": "p", "namespace": "ns", "resourceVersion": "7", "annotations": {
        QUEUE_ANNOTATION: queue_annotation("k", "alice", 1, since, 2),
        RECLAIM_ANNOTATION: "victim"}},
        "spec": {"schedulingGates": [{"name": "x"}]},
        "status": {"phase": "Pending"}}
    entry = entry_from_pod(pod)
    assert entry is not None
    assert (entry.kernel_id, entry.user, entry.gpus, entry.since, entry.round, entry.gated,
            entry.reclaimed, entry.resource_version) == ("k", "alice", 1, since, 2, True,
                                                         "victim", "7")
    assert format_since(since) == "2024-05-01T09:00:00.000123Z"
    assert entry_from_pod({**pod, "spec": {"nodeName": "n"}}) is None  # bound: not waiting
    broken = {"metadata": {"annotations": {QUEUE_ANNOTATION: "{"}}}
    assert entry_from_pod(broken) is None
    unsched = {**pod, "spec": {}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/1 nodes"}]}}
    seen = entry_from_pod(unsched)
    assert seen is not None and not seen.gated and seen.unschedulable == "0/1 nodes"
    later = replace(entry, kernel_id="j", round=1)
    assert [e.kernel_id for e in fair_order([entry, later])] == ["j", "k"]
    assert isinstance(Waiter.seen(entry), Waiter)
