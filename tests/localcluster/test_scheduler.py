"""The local kube-scheduler: fit rules and wording (pure), then binding through the real Store."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from elastic_kernels.localcluster.fit import (REASON_AFFINITY, choose_node, fit_failures,
                                              pod_requests, tolerates, unschedulable_message)
from elastic_kernels.localcluster.nodes import (NodeConfig, default_nodes, node_object,
                                                register_node)
from elastic_kernels.localcluster.store import Store

try:
    from kubelet_fixtures import (EVENTS, PODS, events_for, pod, running_cluster,
                                  scheduled_condition, wait_pod)
except ImportError:  # collected as a package
    from .kubelet_fixtures import (EVENTS, PODS, events_for, pod, running_cluster,
                                   scheduled_condition, wait_pod)

pytestmark = pytest.mark.timeout(20)


# --- nodes --------------------------------------------------------------------------------------


def test_default_nodes_look_like_registered_nodes() -> None:
    cfgs = default_nodes(2, 4, "8", "32Gi")
    assert [c.name for c in cfgs] == ["local-node-0", "local-node-1"]
    node = node_object(cfgs[0])
    assert node["kind"] == "Node"
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.present"] == "true"
    assert labels["kubernetes.io/hostname"] == "local-node-0"
    assert labels["node.kubernetes.io/instance-type"] == "local-4gpu"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert node["status"]["capacity"]["cpu"] == "8"
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "True"
    assert "taints" not in node["spec"]
    cpu_only = node_object(NodeConfig("cpu-node"))
    assert "nvidia.com/gpu" not in cpu_only["status"]["capacity"]
    assert "nvidia.com/gpu.present" not in cpu_only["metadata"]["labels"]


def test_node_config_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        NodeConfig("n", cpu="lots")
    with pytest.raises(ValueError, match="effect"):
        NodeConfig("n", taints=[{"key": "a", "effect": "Sometimes"}])
    with pytest.raises(ValueError, match="domain"):
        NodeConfig("n", extended_resources={"fpga": "1"})


def test_register_node_stores_status_and_is_idempotent() -> None:
    store = Store()
    cfg = NodeConfig("n1", gpus=2, extended_resources={"example.com/fpga": "3"})
    register_node(store, cfg)
    register_node(store, cfg)
    stored = store.get(("", "nodes"), None, "n1")
    assert stored["status"]["allocatable"]["example.com/fpga"] == "3"
    assert stored["status"]["allocatable"]["nvidia.com/gpu"] == "2"


# --- fit rules (pure) ---------------------------------------------------------------------------


def _node(name: str, **kw: object) -> dict:
    return node_object(NodeConfig(name, **kw))  # type: ignore[arg-type]


def test_requests_fall_back_to_limits_and_init_containers_take_the_max() -> None:
    p = {"spec": {
        "containers": [{"resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "1",
                                                                             "memory": "1Gi"}}},
                       {"resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        "initContainers": [{"resources": {"requests": {"cpu": "2"}}}],
    }}
    req = pod_requests(p)
    assert req["cpu"] == Decimal(2)
    assert req["memory"] == Decimal(1024 ** 3)
    assert req["nvidia.com/gpu"] == Decimal(1)


@pytest.mark.parametrize("toleration, taint, ok", [
    ({"operator": "Exists"}, {"key": "a", "value": "b", "effect": "NoSchedule"}, True),
    ({"key": "a", "operator": "Exists"}, {"key": "a", "value": "b", "effect": "NoExecute"}, True),
    ({"key": "a", "value": "b"}, {"key": "a", "value": "b", "effect": "NoSchedule"}, True),
    ({"key": "a", "operator": "Equal", "value": "c"}, {"key": "a", "value": "b",
                                                       "effect": "NoSchedule"}, False),
    ({"key": "a", "operator": "Exists", "effect": "NoExecute"},
     {"key": "a", "effect": "NoSchedule"}, False),
    ({"key": "x", "operator": "Exists"}, {"key": "a", "effect": "NoSchedule"}, False),
])
def test_toleration_rules(toleration: dict, taint: dict, ok: bool) -> None:
    assert tolerates(toleration, taint) is ok


def test_filters_stop_at_the_first_failing_plugin_with_real_texts() -> None:
    tainted = _node("t", taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])
    p = {"spec": {"containers": [{"resources": {"limits": {"cpu": "100"}}}]}}
    assert fit_failures(p, tainted) == ["node(s) had untolerated taint {dedicated: gpu}"]
    soft = _node("s", taints=[{"key": "x", "effect": "PreferNoSchedule"}])
    assert fit_failures(p, soft) == ["Insufficient cpu"]
    p["spec"]["tolerations"] = [{"key": "dedicated", "operator": "Exists"}]
    p["spec"]["nodeSelector"] = {"disk": "ssd"}
    assert fit_failures(p, tainted) == [REASON_AFFINITY]
    p["spec"].pop("nodeSelector")
    assert fit_failures(p, tainted) == ["Insufficient cpu"]
    cordoned = _node("c")
    cordoned["spec"]["unschedulable"] = True
    assert fit_failures({"spec": {"containers": [{}]}}, cordoned) == ["node(s) were unschedulable"]


def test_insufficient_resources_and_pod_count() -> None:
    node = _node("n", cpu="2", memory="1Gi", gpus=1, pods=1)
    p = {"spec": {"containers": [{"resources": {"limits": {
        "cpu": "3", "memory": "2Gi", "nvidia.com/gpu": "2", "example.com/fpga": "1"}}}]}}
    reasons = fit_failures(p, node, {}, pods_on_node=1)
    assert sorted(reasons) == sorted(["Too many pods", "Insufficient cpu", "Insufficient memory",
                                      "Insufficient nvidia.com/gpu",
                                      "Insufficient example.com/fpga"])
    small = {"spec": {"containers": [{"resources": {"limits": {"cpu": "1"}}}]}}
    assert fit_failures(small, node, {"cpu": Decimal("1.5")}) == ["Insufficient cpu"]
    assert fit_failures(small, node, {"cpu": Decimal("1")}) == []


@pytest.mark.parametrize("expr, ok", [
    ({"key": "zone", "operator": "In", "values": ["a", "b"]}, True),
    ({"key": "zone", "operator": "In", "values": ["c"]}, False),
    ({"key": "zone", "operator": "NotIn", "values": ["c"]}, True),
    ({"key": "missing", "operator": "NotIn", "values": ["c"]}, True),
    ({"key": "zone", "operator": "Exists"}, True),
    ({"key": "zone", "operator": "DoesNotExist"}, False),
    ({"key": "missing", "operator": "DoesNotExist"}, True),
    ({"key": "gen", "operator": "Gt", "values": ["3"]}, True),
    ({"key": "gen", "operator": "Lt", "values": ["3"]}, False),
])
def test_required_node_affinity(expr: dict, ok: bool) -> None:
    node = _node("n", labels={"zone": "a", "gen": "5"})
    p = {"spec": {"containers": [{}], "affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [expr]}]}}}}}
    assert (fit_failures(p, node) == []) is ok


def test_affinity_terms_are_ored_and_match_fields_name() -> None:
    node = _node("n1")
    p = {"spec": {"containers": [{}], "affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "Exists"}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]},
        ]}}}}}
    assert fit_failures(p, node) == []


def test_message_counts_reasons_per_node_sorted_like_the_real_scheduler() -> None:
    failures = {
        "a": ["Insufficient nvidia.com/gpu"],
        "b": ["Insufficient cpu", "Insufficient nvidia.com/gpu"],
        "c": [REASON_AFFINITY],
    }
    assert unschedulable_message(3, failures) == (
        "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node "
        "affinity/selector, 2 Insufficient nvidia.com/gpu.")
    assert unschedulable_message(0, {}) == "no nodes available to schedule pods"


def test_least_allocated_node_wins_and_ties_go_by_name() -> None:
    nodes = [_node("b", cpu="4"), _node("a", cpu="4"), _node("c", cpu="8")]
    p = {"spec": {"containers": [{"resources": {"limits": {"cpu": "1"}}}]}}
    name, failures = choose_node(p, nodes, {}, {})
    assert name == "c" and failures == {}
    name, _ = choose_node(p, nodes[:2], {}, {})
    assert name == "a"
    name, _ = choose_node(p, nodes[:2], {"a": {"cpu": Decimal(2)}}, {})
    assert name == "b"


# --- the scheduler through the store ------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_gpu_exhaustion_reports_unschedulable_then_binds_when_freed(tmp_path: Path) -> None:
    nodes = default_nodes(2, 1, "8", "32Gi")
    async with running_cluster(nodes, tmp_path, kubelet=False) as c:
        store = c.store
        store.create(PODS, "default", pod("gpu-a", gpus=1))
        store.create(PODS, "default", pod("gpu-b", gpus=1))
        for name in ("gpu-a", "gpu-b"):
            await wait_pod(store, name, lambda p: bool(p and p["spec"].get("nodeName")))
        store.create(PODS, "default", pod("gpu-c", gpus=1))
        waiting = await wait_pod(store, "gpu-c",
                                 lambda p: scheduled_condition(p).get("status") == "False")
        cond = scheduled_condition(waiting)
        assert cond["reason"] == "Unschedulable"
        assert cond["message"] == "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
        (event,) = events_for(store, "gpu-c", "FailedScheduling")
        assert event["type"] == "Warning"
        assert event["source"] == {"component": "default-scheduler"}
        assert event["message"] == cond["message"]
        assert event["involvedObject"]["kind"] == "Pod"
        assert event["involvedObject"]["uid"] == waiting["metadata"]["uid"]
        assert event["count"] == 1 and event["firstTimestamp"] and event["lastTimestamp"]
        assert waiting["spec"].get("nodeName") is None

        # A CPU pod coming and going makes the scheduler retry: same message, no rewrite of
        # the condition, and the existing Event's count goes up instead of a new Event.
        rv_before = store.get(PODS, "default", "gpu-c")["metadata"]["resourceVersion"]
        store.create(PODS, "default", pod("cpu-1", cpu="1"))
        await wait_pod(store, "cpu-1", lambda p: bool(p and p["spec"].get("nodeName")))
        store.delete(PODS, "default", "cpu-1", grace_period_seconds=0)
        await wait_pod(store, "cpu-1", lambda p: p is None)
        store.create(PODS, "default", pod("cpu-2", cpu="1"))  # a later event to sync on
        await wait_pod(store, "cpu-2", lambda p: bool(p and p["spec"].get("nodeName")))
        (event,) = events_for(store, "gpu-c", "FailedScheduling")
        assert event["count"] == 2
        assert store.get(PODS, "default", "gpu-c")["metadata"]["resourceVersion"] == rv_before

        # Freeing a GPU binds the waiting pod, with PodScheduled=True and a Scheduled event.
        freed_node = store.get(PODS, "default", "gpu-a")["spec"]["nodeName"]
        store.delete(PODS, "default", "gpu-a", grace_period_seconds=0)
        bound = await wait_pod(store, "gpu-c", lambda p: bool(p and p["spec"].get("nodeName")))
        assert bound["spec"]["nodeName"] == freed_node
        assert scheduled_condition(bound)["status"] == "True"
        (scheduled,) = events_for(store, "gpu-c", "Scheduled")
        assert scheduled["message"] == f"Successfully assigned default/gpu-c to {freed_node}"
        assert scheduled["type"] == "Normal"


@pytest.mark.timeout(20)
async def test_waiting_pods_are_served_in_arrival_order(tmp_path: Path) -> None:
    async with running_cluster([NodeConfig("n0", gpus=1)], tmp_path, kubelet=False) as c:
        store = c.store
        store.create(PODS, "default", pod("holder", gpus=1))
        await wait_pod(store, "holder", lambda p: bool(p and p["spec"].get("nodeName")))
        for name in ("first", "second"):
            store.create(PODS, "default", pod(name, gpus=1))
            await wait_pod(store, name, lambda p: scheduled_condition(p).get("status") == "False")
        store.delete(PODS, "default", "holder", grace_period_seconds=0)
        await wait_pod(store, "first", lambda p: bool(p and p["spec"].get("nodeName")))
        second = store.get(PODS, "default", "second")
        assert not second["spec"].get("nodeName")
        assert scheduled_condition(second)["reason"] == "Unschedulable"
        # A terminal pod frees its capacity too (phase Succeeded, object still there).
        first = store.get(PODS, "default", "first")
        first["status"]["phase"] = "Succeeded"
        store.replace(PODS, "default", "first", first, subresource="status")
        await wait_pod(store, "second", lambda p: bool(p and p["spec"].get("nodeName")))


@pytest.mark.timeout(20)
async def test_selector_and_taint_mismatches_use_the_real_wording(tmp_path: Path) -> None:
    nodes = [NodeConfig("plain-0"),
             NodeConfig("tainted-0", taints=[{"key": "dedicated", "value": "ml",
                                              "effect": "NoSchedule"}])]
    async with running_cluster(nodes, tmp_path, kubelet=False) as c:
        store = c.store
        store.create(PODS, "default", pod("picky", nodeSelector={"accelerator": "a100"}))
        p = await wait_pod(store, "picky",
                           lambda p: scheduled_condition(p).get("status") == "False")
        assert scheduled_condition(p)["message"] == (
            "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
            "1 node(s) had untolerated taint {dedicated: ml}.")
        store.create(PODS, "default", pod("tolerant", nodeSelector={"kubernetes.io/hostname":
                                                                    "tainted-0"},
                                          tolerations=[{"key": "dedicated", "operator": "Equal",
                                                        "value": "ml", "effect": "NoSchedule"}]))
        p = await wait_pod(store, "tolerant", lambda p: bool(p and p["spec"].get("nodeName")))
        assert p["spec"]["nodeName"] == "tainted-0"
        store.create(PODS, "default", pod("huge", cpu="64"))
        p = await wait_pod(store, "huge", lambda p: scheduled_condition(p).get("status") == "False")
        assert scheduled_condition(p)["message"] == (
            "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint "
            "{dedicated: ml}.")


@pytest.mark.timeout(20)
async def test_new_node_and_other_schedulers(tmp_path: Path) -> None:
    async with running_cluster([NodeConfig("cpu-0")], tmp_path, kubelet=False) as c:
        store = c.store
        store.create(PODS, "default", pod("other", schedulerName="someone-else"))
        store.create(PODS, "default", pod("needs-gpu", gpus=2))
        p = await wait_pod(store, "needs-gpu",
                           lambda p: scheduled_condition(p).get("status") == "False")
        assert scheduled_condition(p)["message"] == (
            "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
        store.create(("", "nodes"), None, node_object(NodeConfig("gpu-0", gpus=2)))
        p = await wait_pod(store, "needs-gpu", lambda p: bool(p and p["spec"].get("nodeName")))
        assert p["spec"]["nodeName"] == "gpu-0"
        # A pod for another scheduler is left alone entirely.
        other = store.get(PODS, "default", "other")
        assert not other["spec"].get("nodeName") and not scheduled_condition(other)
        assert not events_for(store, "other")
        events, _ = store.list(EVENTS, "default")
        assert all(e["involvedObject"]["name"] != "other" for e in events)


@pytest.mark.timeout(20)
async def test_pods_without_requests_spread_over_nodes(tmp_path: Path) -> None:
    async with running_cluster(default_nodes(2, 0, "8", "32Gi"), tmp_path, kubelet=False) as c:
        for i in range(4):
            c.store.create(PODS, "default", pod(f"spread-{i}"))
        placed = []
        for i in range(4):
            p = await wait_pod(c.store, f"spread-{i}", lambda p: bool(p and p["spec"].get(
                "nodeName")))
            placed.append(p["spec"]["nodeName"])
        assert sorted(placed) == ["local-node-0", "local-node-0", "local-node-1", "local-node-1"]


@pytest.mark.timeout(20)
async def test_scheduling_gates_hold_a_pod_until_removed(tmp_path: Path) -> None:
    """The gateway's fair GPU queue relies on Pod scheduling readiness (schedulingGates)."""
    async with running_cluster([NodeConfig("n0", gpus=1)], tmp_path, kubelet=False) as c:
        store = c.store
        gated = pod("gated", gpus=1)
        gated["spec"]["schedulingGates"] = [{"name": "elastic.jupyter.org/gpu-queue"}]
        store.create(PODS, "default", gated)
        held = await wait_pod(store, "gated",
                              lambda p: scheduled_condition(p).get("reason") == "SchedulingGated")
        assert not held["spec"].get("nodeName")
        assert not events_for(store, "gated", "FailedScheduling")
        store.patch(PODS, "default", "gated", {"spec": {"schedulingGates": None}}, "merge")
        bound = await wait_pod(store, "gated", lambda p: bool(p and p["spec"].get("nodeName")))
        assert scheduled_condition(bound)["status"] == "True"
