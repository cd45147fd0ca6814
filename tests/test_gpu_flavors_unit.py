"""GPU flavors (issue 16) without a cluster: which resources are GPUs, the per-flavor queue, reclaim
and the autoscaler window on a fake clock, and the local cluster's node and device descriptions.

The queue runs with the fakes of ``test_gpuqueue_unit.py`` (its cluster calls recorded, reclaim
candidates from the real culling policy); the flavor of each candidate comes from the fake's
kernelspec name, as the gateway reads it from the kernel's record.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from elastic_kernels.gateway.lifecycle.gpuqueue import GpuQueue
from elastic_kernels.kube import resources as R
from elastic_kernels.localcluster.allocators import (DeviceAllocator, DeviceExhausted,
                                                     device_env, mig_uuid)
from elastic_kernels.localcluster.nodes import (load_node_layout, node_object,
                                                nodes_from_options, parse_gpu_flavors)
from elastic_kernels.provisioner.podstate import Progress, assess_pod, waiting_resources
from elastic_kernels.queueorder import entry_from_pod, heads, queue_annotation

from .conftest import derived_kernelspec
from .test_gpuqueue_unit import Clock, Cluster

pytestmark = pytest.mark.timeout(30)

MIG = "nvidia.com/mig-1g.10gb"
WHOLE = "nvidia.com/gpu"


# --- which resources are GPUs ------------------------------------------------------------------


def test_default_flavors_cover_whole_mig_shared_and_amd() -> None:
    flavors = R.GpuFlavors()
    for name in (WHOLE, MIG, "nvidia.com/mig-3g.40gb", "nvidia.com/gpu.shared", "amd.com/gpu"):
        assert flavors.matches(name), name
    for name in ("cpu", "memory", "example.com/fpga", "nvidia.com/gpu-other"):
        assert not flavors.matches(name), name


@pytest.mark.parametrize("pattern", ["cpu", "*", "*/gpu", "nvidia.com/", "nvidia.com/gpu x"])
def test_a_malformed_flavor_pattern_is_refused_with_the_reason(pattern: str) -> None:
    with pytest.raises(R.GpuFlavorError, match="is not an extended resource name"):
        R.GpuFlavors((pattern,))


def test_a_kernelspec_asks_for_one_flavor() -> None:
    doc = derived_kernelspec("python-gpu", "mig")
    doc["spec"]["resources"]["limits"] = {"memory": "8Gi", MIG: "2"}
    view = R.KernelSpecView.from_object(doc)
    assert (view.gpu_resource, view.gpus) == (MIG, 2)
    assert view.to_jupyter_kernelspec()["metadata"]["elastic"]["gpu_resource"] == MIG

    doc["spec"]["resources"]["limits"] = {MIG: "1", WHOLE: "1"}
    with pytest.raises(R.ResourceError, match="asks for 2 GPU flavors"):
        R.KernelSpecView.from_object(doc)
    doc["spec"]["resources"]["limits"] = {MIG: "0.5"}
    with pytest.raises(R.ResourceError, match="not a whole number of devices"):
        R.KernelSpecView.from_object(doc)


def test_a_resource_outside_the_configured_flavors_is_not_a_gpu() -> None:
    limits = R.ResourceRequirements(limits={MIG: "1"})
    assert R.gpu_request(limits, R.GpuFlavors((WHOLE,))) == ("", 0)
    assert R.gpu_request(limits, R.GpuFlavors(("nvidia.com/mig-*",))) == (MIG, 1)


def test_only_a_gpu_flavor_shortage_is_waited_for() -> None:
    assert waiting_resources(
        "0/3 nodes are available: 2 Insufficient nvidia.com/gpu.shared, 1 Insufficient cpu.") \
        == ["nvidia.com/gpu.shared"]
    assert waiting_resources(f"0/1 nodes are available: 1 Insufficient {MIG}.") == [MIG]

    def pod(message: str) -> dict[str, object]:
        return {"status": {"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message}]}}

    assert assess_pod(pod(f"0/1 nodes are available: 1 Insufficient {MIG}.")).progress \
        is Progress.WAITING_FOR_CAPACITY
    assert assess_pod(pod("0/1 nodes are available: 1 Insufficient example.com/fpga.")).progress \
        is Progress.FAILED


# --- the shared order ---------------------------------------------------------------------------


def test_the_queue_annotation_carries_the_flavor() -> None:
    since = datetime(2024, 5, 1, 9, tzinfo=timezone.utc)

    def pod(annotation: str) -> dict[str, object]:
        return {"metadata": {"name": "p", "namespace": "ns",
                             "annotations": {"elastic.jupyter.org/gpu-queue": annotation}},
                "spec": {"schedulingGates": [{"name": "g"}]}, "status": {"phase": "Pending"}}

    entry = entry_from_pod(pod(queue_annotation("k", "alice", 1, since, 0, MIG)))
    assert entry is not None and entry.resource == MIG
    # Written by a gateway from before flavors: it waited for whole GPUs.
    old = json.dumps({"kernel": "k", "user": "alice", "gpus": 1,
                      "since": "2024-05-01T09:00:00.000000Z", "round": 0})
    entry = entry_from_pod(pod(old))
    assert entry is not None and entry.resource == WHOLE


def test_heads_is_the_first_n_and_at_least_the_head() -> None:
    assert heads(["a", "b", "c"], 1) == ["a"]
    assert heads(["a", "b", "c"], 2) == ["a", "b"]
    assert heads(["a"], 5) == ["a"]
    assert heads(["a", "b"], 0) == ["a"]


# --- the queue per flavor -----------------------------------------------------------------------


def flavored_queue(*, ungated: int = 1) -> tuple[GpuQueue, Cluster]:
    """The unit tests' fakes; a candidate's flavor is its kernelspec name (``gpu`` or ``mig``)."""
    cluster = Cluster(Clock())
    queue = GpuQueue(reclaim_candidates=cluster.candidates, reclaim=cluster.reclaim,
                     ungate=cluster.ungate, report=cluster.report, clock=cluster.clock,
                     victim_flavor=lambda d: MIG if d.kernel.kernel_spec == "mig" else WHOLE,
                     ungated=ungated)
    return queue, cluster


def join(queue: GpuQueue, kernel_id: str, user: str, resource: str, *,
         gated: bool = True) -> None:
    if gated:
        queue.enqueue(kernel_id, user, 1, "default", f"pod-{kernel_id}", gated=True,
                      resource=resource)
    else:
        queue.unschedulable(kernel_id, user, 1, "default", f"pod-{kernel_id}",
                            f"0/1 nodes are available: 1 Insufficient {resource}.", resource)


async def test_each_flavor_is_its_own_queue() -> None:
    queue, cluster = flavored_queue()
    join(queue, "g0", "alice", WHOLE, gated=False)
    join(queue, "m0", "bob", MIG, gated=False)
    join(queue, "m1", "alice", MIG)  # alice's first MIG start: round 0 though she waits for a GPU
    join(queue, "g1", "bob", WHOLE)
    await queue.settled()

    assert [w.kernel_id for w in queue.ordered(MIG)] == ["m0", "m1"]
    assert queue.has_waiting(MIG) and queue.has_waiting(WHOLE)
    assert not queue.has_waiting("nvidia.com/gpu.shared")
    assert queue.describe("m1") == f"waiting for 1 {MIG}: 2nd in queue"
    assert queue.describe("g1") == f"waiting for 1 {WHOLE}: 2nd in queue"
    assert queue.waiting_by_flavor() == {WHOLE: 2, MIG: 2}
    reported = {kid: status["message"] for kid, status in cluster.reports}
    assert reported["m1"] == f"waiting for 1 {MIG}: 2nd in queue"
    assert {w["kernel_id"]: (w["resource"], w["position"]) for w in queue.snapshot()} == {
        "g0": (WHOLE, 1), "m0": (MIG, 1), "m1": (MIG, 2), "g1": (WHOLE, 2)}
    # Nothing to ungate: each flavor's head is already schedulable; the others stay gated.
    assert cluster.ungated == []

    queue.leave("m0")  # its pod was bound
    await queue.settled()
    assert cluster.ungated == ["m1"]  # the MIG queue moves; the whole-GPU waiter still waits
    assert queue.describe("g1") == f"waiting for 1 {WHOLE}: 2nd in queue"


async def test_reclaim_takes_only_a_kernel_of_the_waiters_flavor() -> None:
    queue, cluster = flavored_queue()
    cluster.running("idle-whole", idle=3600)  # idle longest: the best candidate by idleness
    cluster.running("idle-mig", idle=120)
    cluster.kernels["idle-mig"] = replace(cluster.kernels["idle-mig"], kernel_spec="mig")
    join(queue, "m0", "carol", MIG, gated=False)
    await queue.settled()
    assert cluster.reclaimed == ["idle-mig"]
    assert "idle-whole" in cluster.kernels

    # A waiter of a flavor nobody idles on gets no reclaim at all.
    join(queue, "s0", "dave", "nvidia.com/gpu.shared", gated=False)
    await queue.settled()
    assert cluster.reclaimed == ["idle-mig"]


async def test_autoscaler_mode_leaves_the_first_n_of_each_flavor_ungated() -> None:
    queue, cluster = flavored_queue(ungated=2)
    join(queue, "a0", "alice", WHOLE, gated=False)
    join(queue, "a1", "alice", WHOLE)
    join(queue, "b0", "bob", WHOLE)
    join(queue, "m0", "bob", MIG)
    join(queue, "m1", "bob", MIG)
    join(queue, "m2", "bob", MIG)
    await queue.settled()
    # Fair order a0, b0, a1: the window is a0 (already ungated) and b0. MIG: m0 and m1.
    assert sorted(cluster.ungated) == ["b0", "m0", "m1"]
    assert [w.kernel_id for w in queue.ordered() if w.gated] == ["a1", "m2"]

    queue.leave("a0")
    await queue.settled()
    assert "a1" in cluster.ungated  # the window moved down the order


def test_the_queue_needs_its_head_ungated() -> None:
    with pytest.raises(ValueError, match="at least its head"):
        flavored_queue(ungated=0)


# --- the local cluster's nodes and devices ------------------------------------------------------


def test_gpu_flavors_option_describes_mixed_nodes() -> None:
    nodes = parse_gpu_flavors(
        f"nvidia.com/gpu=2,{MIG}=7+nvidia.com/mig-3g.40gb=2,nvidia.com/gpu.shared=8",
        gpu_replicas=4)
    capacity = [node_object(n)["status"]["capacity"] for n in nodes]
    assert capacity[0][WHOLE] == "2"
    assert (capacity[1][MIG], capacity[1]["nvidia.com/mig-3g.40gb"]) == ("7", "2")
    assert WHOLE not in capacity[1]
    assert capacity[2]["nvidia.com/gpu.shared"] == "8"
    labels = [node_object(n)["metadata"]["labels"] for n in nodes]
    assert labels[1]["nvidia.com/mig.strategy"] == "mixed"
    assert labels[2]["nvidia.com/gpu.replicas"] == "4"
    assert all(lab["nvidia.com/gpu.present"] == "true" for lab in labels)


@pytest.mark.parametrize("spec, problem", [
    ("", "expected RESOURCE=COUNT"),
    ("nvidia.com/gpu=2,,", "expected RESOURCE=COUNT"),
    ("nvidia.com/gpu", "is not RESOURCE=COUNT"),
    ("nvidia.com/gpu=two", "is not RESOURCE=COUNT"),
    ("gpu=2", "is not an extended resource name"),
    ("example.com/fpga=1", "is not a simulated GPU resource"),
    ("nvidia.com/mig-big=1", "is not a MIG profile"),
    ("nvidia.com/gpu=1+nvidia.com/gpu=2", "given twice"),
])
def test_a_malformed_gpu_flavors_option_says_what_is_wrong(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_gpu_flavors(spec)


def test_node_layout_file(tmp_path: Path) -> None:
    layout = tmp_path / "nodes.yaml"
    layout.write_text(f"""
nodes:
  - name: whole
    gpus: {{nvidia.com/gpu: 1}}
  - name: mig
    gpus: {{{MIG}: 2}}
    labels: {{pool: mig}}
  - {{name: cpu, cpu: "4"}}
""")
    nodes = load_node_layout(layout)
    assert [(n.name, n.gpus, n.gpu_flavors) for n in nodes] == [
        ("whole", 1, {}), ("mig", 0, {MIG: 2}), ("cpu", 0, {})]
    assert node_object(nodes[1])["metadata"]["labels"]["pool"] == "mig"
    assert nodes_from_options(None, str(layout)) is not None
    with pytest.raises(ValueError, match="not both"):
        nodes_from_options("nvidia.com/gpu=1", str(layout))
    assert nodes_from_options(None, None) is None


@pytest.mark.parametrize("text, problem", [
    ("nodes: []", "non-empty list 'nodes'"),
    ("nodes: [{gpus: {nvidia.com/gpu: 1}}]", r"nodes\[0\] needs a name"),
    ("nodes: [{name: a, gpu: 1}]", "unknown field"),
    ("nodes: [{name: a, gpus: [1]}]", "gpus must map resource names"),
    ("nodes: [{name: a, gpus: {nvidia.com/gpu: -1}}]", "gpus must be >= 0"),
    ("nodes: [{name: a, gpus: {nvidia.com/mig-1g.10gb: x}}]", "must be a whole number"),
    ("nodes: [{name: a}, {name: a}]", "given twice"),
    ("nodes: [{name: a", "not valid YAML"),
])
def test_a_malformed_layout_names_the_node_and_the_field(tmp_path: Path, text: str,
                                                          problem: str) -> None:
    layout = tmp_path / "nodes.yaml"
    layout.write_text(text)
    with pytest.raises(ValueError, match=problem):
        load_node_layout(layout)


def test_devices_are_handed_out_per_resource() -> None:
    devices = DeviceAllocator()
    devices.set_capacity("n", 1)
    devices.set_capacity("n", 2, MIG)
    assert devices.allocate("n", "pod-a/kernel", 1) == [0]
    assert devices.allocate("n", "pod-b/kernel", 2, MIG) == [0, 1]
    with pytest.raises(DeviceExhausted, match=f"unavailable for {MIG}"):
        devices.allocate("n", "pod-c/kernel", 1, MIG)
    devices.release("n", "pod-b")
    assert devices.free("n", MIG) == [0, 1] and devices.free("n") == []


def test_the_pod_sees_its_devices_as_the_device_plugins_show_them() -> None:
    assert device_env("n", WHOLE, [1, 2], kind="gpu") == {
        "CUDA_VISIBLE_DEVICES": "1,2", "NVIDIA_VISIBLE_DEVICES": "1,2"}
    mig = device_env("n", MIG, [3], kind="mig")
    assert mig["CUDA_VISIBLE_DEVICES"] == mig_uuid("n", MIG, 3)
    assert mig["CUDA_VISIBLE_DEVICES"].startswith("MIG-")
    assert mig_uuid("n", MIG, 3) != mig_uuid("n", MIG, 4) != mig_uuid("m", MIG, 4)
    # Shares 0-3 are slices of the first GPU after the node's 2 whole ones, 4-7 of the next.
    assert device_env("n", "nvidia.com/gpu.shared", [5], kind="shared", whole_gpus=2,
                      replicas=4)["CUDA_VISIBLE_DEVICES"] == "3"
    assert device_env("n", "amd.com/gpu", [0], kind="gpu") == {
        "ROCR_VISIBLE_DEVICES": "0", "HIP_VISIBLE_DEVICES": "0"}
