"""The fair GPU queue and reclaim, without a cluster: fake callables and a fake clock.

The queue (``gateway/lifecycle/gpuqueue.py``) is built as the gateway builds it, but its cluster
calls are fakes that record what they were asked, reclaim candidates come from the real culling
policy (:func:`elastic_kernels.culling.policy.reclaim_candidates`) over facts at the fake
clock's time, and nothing sleeps: :meth:`GpuQueue.settled` returns once the reconciler has done
all it will do with instant fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from elastic_kernels.culling.policy import (CullDecision, CullReason, KernelFacts, Policy,
                                            PolicyBook, reclaim_candidates)
from elastic_kernels.gateway.lifecycle.gpuqueue import GpuQueue, Waiter, ordinal
from elastic_kernels.kube import resources as R

pytestmark = pytest.mark.timeout(30)

T0 = datetime(2024, 5, 1, 9, 0, 0, tzinfo=timezone.utc).timestamp()


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Cluster:
    """The fakes: GPU kernels that may be reclaimed, and a record of every call."""

    clock: Clock
    book: PolicyBook = field(default_factory=lambda: PolicyBook(Policy(reclaim_after=60)))
    kernels: dict[str, KernelFacts] = field(default_factory=dict)
    reclaimed: list[str] = field(default_factory=list)
    ungated: list[str] = field(default_factory=list)
    reports: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    gone_pods: set[str] = field(default_factory=set)
    lose_races: int = 0

    def running(self, name: str, *, idle: float, state: str | None = "idle",
                gpus: int = 1) -> None:
        """A running GPU kernel whose last activity was ``idle`` seconds ago."""
        last = datetime.fromtimestamp(self.clock() - idle, timezone.utc)
        self.kernels[name] = KernelFacts(
            name=f"kernel-{name}", namespace="default", kernel_id=name, user=f"owner-{name}",
            kernel_spec="gpu", phase=R.PHASE_RUNNING, gpus=gpus,
            created_at=last - timedelta(hours=1), started_at=last - timedelta(hours=1),
            last_activity=last, execution_state=state, connections=1)

    def candidates(self) -> Sequence[CullDecision]:
        now = datetime.fromtimestamp(self.clock(), timezone.utc)
        return reclaim_candidates(self.kernels.values(), self.book, now)

    async def reclaim(self, decision: CullDecision) -> bool:
        if self.lose_races:
            self.lose_races -= 1
            return False
        self.reclaimed.append(decision.kernel.kernel_id)
        del self.kernels[decision.kernel.kernel_id]
        return True

    async def ungate(self, waiter: Waiter) -> bool:
        if waiter.pod_name in self.gone_pods:
            return False
        self.ungated.append(waiter.kernel_id)
        return True

    async def report(self, waiter: Waiter, status: dict[str, Any]) -> None:
        self.reports.append((waiter.kernel_id, status))


def make_queue(clock: Clock | None = None) -> tuple[GpuQueue, Cluster]:
    cluster = Cluster(clock or Clock())
    queue = GpuQueue(reclaim_candidates=cluster.candidates, reclaim=cluster.reclaim,
                     ungate=cluster.ungate, report=cluster.report, clock=cluster.clock)
    return queue, cluster


def join(queue: GpuQueue, kernel_id: str, user: str, *, gated: bool = True) -> None:
    """A start joins as the provisioner joins it: gated behind others, or unschedulable."""
    if gated:
        queue.enqueue(kernel_id, user, 1, "default", f"pod-{kernel_id}", gated=True)
    else:
        queue.unschedulable(kernel_id, user, 1, "default", f"pod-{kernel_id}",
                            "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")


def order(queue: GpuQueue) -> list[str]:
    return [w.kernel_id for w in queue.ordered()]


# --- the order ----------------------------------------------------------------------------------


async def test_round_robin_across_users_fifo_within_a_user() -> None:
    queue, _ = make_queue()
    for i in range(5):
        join(queue, f"a{i}", "alice")
    join(queue, "b0", "bob")
    assert order(queue) == ["a0", "b0", "a1", "a2", "a3", "a4"]
    assert [w["user"] for w in queue.snapshot()] == ["alice", "bob", "alice", "alice", "alice",
                                                     "alice"]
    assert [queue.position(k) for k in ("a0", "b0", "a4")] == [1, 2, 6]
    assert queue.position("nobody") is None
    await queue.stop()


async def test_three_users_interleave_by_round_then_arrival() -> None:
    queue, _ = make_queue()
    for kernel_id, user in [("a0", "alice"), ("a1", "alice"), ("b0", "bob"), ("c0", "carol"),
                            ("b1", "bob"), ("a2", "alice"), ("c1", "carol")]:
        join(queue, kernel_id, user)
    # Round 0: a0, b0, c0 (arrival order); round 1: a1, b1, c1; round 2: a2.
    assert order(queue) == ["a0", "b0", "c0", "a1", "b1", "c1", "a2"]
    await queue.stop()


async def test_a_round_is_fixed_on_arrival() -> None:
    """A user just served does not jump back ahead of one who waited."""
    queue, _ = make_queue()
    join(queue, "a0", "alice")
    join(queue, "a1", "alice")
    join(queue, "b0", "bob")
    queue.leave("a0")  # served
    join(queue, "c0", "carol")  # round 0, after b0
    join(queue, "a2", "alice")  # alice still has a1 waiting: round 1, after a1
    assert order(queue) == ["b0", "c0", "a1", "a2"]
    await queue.stop()


async def test_position_is_written_and_rewritten_only_when_it_changes() -> None:
    queue, cluster = make_queue()
    join(queue, "a0", "alice")
    join(queue, "a1", "alice")
    join(queue, "b0", "bob")
    await queue.settled()
    written = {kid: status for kid, status in cluster.reports}
    assert written["b0"]["message"] == "waiting for 1 nvidia.com/gpu: 2nd in queue"
    assert written["b0"]["queuePosition"] == 2 and written["b0"]["reason"] == "QueuedForGPU"
    assert written["b0"]["podName"] == "pod-b0" and written["b0"]["phase"] == R.PHASE_PENDING
    assert queue.describe("a1") == "waiting for 1 nvidia.com/gpu: 3rd in queue"
    before = len(cluster.reports)
    queue.poke()  # nothing changed: no write
    join(queue, "a0", "alice")  # a repeated join of a waiting start changes nothing either
    await queue.settled()
    assert len(cluster.reports) == before
    queue.leave("a0")
    await queue.settled()
    assert [kid for kid, _ in cluster.reports[before:]] == ["b0", "a1"]
    assert cluster.reports[-1][1]["queuePosition"] == 2
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"]
    await queue.stop()


async def test_only_the_head_is_ungated_and_a_gone_pod_leaves() -> None:
    queue, cluster = make_queue()
    assert not queue.has_waiting()
    join(queue, "a0", "alice")
    join(queue, "b0", "bob")
    assert queue.has_waiting()
    await queue.settled()
    assert cluster.ungated == ["a0"]  # only the head may be scheduled
    assert [w.gated for w in queue.ordered()] == [False, True]
    assert queue.has_waiting()  # b0 still waits behind a gate
    cluster.gone_pods.add("pod-b0")
    queue.leave("a0")  # bound: b0 is the head, but its pod was deleted meanwhile
    await queue.settled()
    assert cluster.ungated == ["a0"] and len(queue) == 0 and not queue.has_waiting()
    await queue.stop()


# --- reclaim -----------------------------------------------------------------------------------


async def test_reclaim_takes_the_longest_idle_past_reclaim_after_never_a_busy_one() -> None:
    queue, cluster = make_queue()
    cluster.running("idle-5m", idle=300)
    cluster.running("idle-20m", idle=1200)
    cluster.running("idle-30s", idle=30)  # not yet past reclaimAfter (60 s)
    cluster.running("busy", idle=5000, state="busy")  # busy: never
    cluster.running("unknown", idle=5000, state=None)  # state unknown here: never
    cluster.running("cpu", idle=5000, gpus=0)  # frees no GPU
    join(queue, "w0", "carol", gated=False)
    await queue.settled()
    assert cluster.reclaimed == ["idle-20m"]  # one waiter: one reclaim, the idlest
    waiter = queue.ordered()[0]
    assert waiter.reclaimed == "idle-20m"
    assert queue.describe("w0").endswith("(an idle GPU kernel was reclaimed for it)")
    assert queue.snapshot()[0]["reclaimed"] is True
    # The same waiter is not given a second kernel while the first frees its GPU.
    queue.poke()
    await queue.settled()
    assert cluster.reclaimed == ["idle-20m"]
    await queue.stop()


async def test_one_reclaim_per_waiter_and_no_more_than_there_are_candidates() -> None:
    clock = Clock()
    queue, cluster = make_queue(clock)
    cluster.running("k-old", idle=600)
    cluster.running("k-young", idle=30)
    join(queue, "w0", "alice", gated=False)
    join(queue, "w1", "bob", gated=False)
    join(queue, "w2", "carol", gated=True)  # gated: the scheduler has not even tried it
    await queue.settled()
    assert cluster.reclaimed == ["k-old"]  # w1 waits: nobody else is idle long enough
    assert [w.reclaimed for w in queue.ordered()] == ["k-old", "", ""]
    clock.now += 31  # k-young is now idle past reclaimAfter; the culler's pass pokes
    queue.poke()
    await queue.settled()
    assert cluster.reclaimed == ["k-old", "k-young"]
    assert [w.reclaimed for w in queue.ordered()] == ["k-old", "k-young", ""]
    await queue.stop()


async def test_a_reclaim_lost_to_someone_else_is_tried_again() -> None:
    queue, cluster = make_queue()
    cluster.running("k1", idle=600)
    cluster.lose_races = 1
    join(queue, "w0", "alice", gated=False)
    await queue.settled()
    assert cluster.reclaimed == [] and queue.ordered()[0].reclaimed == ""
    queue.poke()
    await queue.settled()
    assert cluster.reclaimed == ["k1"]
    await queue.stop()


async def test_reclaim_candidates_follow_each_kernelspecs_reclaim_after() -> None:
    queue, cluster = make_queue()
    cluster.book = PolicyBook(Policy(reclaim_after=60), {"never": Policy(reclaim_after=0),
                                                         "slow": Policy(reclaim_after=3600)})
    cluster.running("k-never", idle=10_000)
    cluster.running("k-slow", idle=1800)
    cluster.running("k-default", idle=90)
    cluster.kernels["k-never"] = replace(cluster.kernels["k-never"], kernel_spec="never")
    cluster.kernels["k-slow"] = replace(cluster.kernels["k-slow"], kernel_spec="slow")
    decisions = cluster.candidates()
    assert [d.kernel.kernel_id for d in decisions] == ["k-default"]
    assert decisions[0].reason is CullReason.RECLAIMED
    assert "past its reclaimAfter of 1m" in decisions[0].message
    await queue.stop()


# --- leaving and cancellation --------------------------------------------------------------------


async def test_a_cancelled_start_leaves_and_its_wait_is_measured_on_the_clock() -> None:
    clock = Clock()
    queue, cluster = make_queue(clock)
    waits: list[float] = []
    queue.on_wait_ended = waits.append
    join(queue, "a0", "alice")
    clock.now += 10
    join(queue, "b0", "bob")
    join(queue, "c0", "carol")
    await queue.settled()
    assert queue.snapshot()[0]["waiting_since"] == "2024-05-01T09:00:00Z"
    clock.now += 42.5
    queue.leave("b0")  # its start was cancelled (the provisioner's finally)
    queue.leave("b0")  # twice is harmless
    assert waits == [42.5]
    assert order(queue) == ["a0", "c0"] and queue.position("c0") == 2
    assert not queue.is_waiting("b0") and queue.is_waiting("c0")
    await queue.settled()
    assert cluster.reports[-1][0] == "c0"
    assert cluster.reports[-1][1]["queuePosition"] == 2
    # Stopping the gateway cancels the reconciler; the waiters' starts end on their own.
    await queue.stop()
    await queue.settled()
    assert len(queue) == 2


async def test_a_waiter_that_leaves_before_its_reclaim_does_not_block_the_next() -> None:
    queue, cluster = make_queue()
    cluster.running("k1", idle=600)
    cluster.running("k2", idle=300)
    join(queue, "w0", "alice", gated=False)
    await queue.settled()
    assert cluster.reclaimed == ["k1"]
    queue.leave("w0")  # bound (or cancelled) after the reclaim
    join(queue, "w1", "bob", gated=False)
    await queue.settled()
    assert cluster.reclaimed == ["k1", "k2"]
    await queue.stop()
