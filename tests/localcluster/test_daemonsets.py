"""The local cluster's DaemonSet controller and simulated image pulls.

A store with a scheduler and a kubelet (kubelet_fixtures), plus the controller: DaemonSets are
created in the store as the API server would store them, and every wait is on a watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from elastic_kernels.localcluster.daemonsets import (DAEMONSETS, REVISION_LABEL,
                                                     DaemonSetController, daemon_pod,
                                                     max_unavailable)
from elastic_kernels.localcluster.images import ImagePolicy, is_pause_image
from elastic_kernels.localcluster.nodes import NodeConfig, register_node

from .kubelet_fixtures import Cluster, events_for, pod, running_cluster, wait_pod

pytestmark = pytest.mark.timeout(60)

JSON = dict[str, Any]
PODS = ("", "pods")
PAUSE = "registry.k8s.io/pause:3.10"
GPU_NODE = NodeConfig("gpu-0", gpus=1)
GPU_NODE_2 = NodeConfig("gpu-1", gpus=1)
CPU_NODE = NodeConfig("cpu-0")


def daemonset(name: str, images: list[str], **pod_spec: Any) -> JSON:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": labels},
            "updateStrategy": {"type": "RollingUpdate",
                               "rollingUpdate": {"maxUnavailable": "100%"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "initContainers": [{"name": f"pull-{i}", "image": image, "command": ["true"]}
                                       for i, image in enumerate(images)],
                    "containers": [{"name": "pause", "image": PAUSE}],
                    "terminationGracePeriodSeconds": 0,
                    **pod_spec,
                },
            },
        },
    }


@contextlib.asynccontextmanager
async def cluster_with_controller(tmp_path: Path, nodes: list[NodeConfig],
                                  pull_seconds: float | None = 0.2
                                  ) -> AsyncIterator[tuple[Cluster, DaemonSetController]]:
    policy = ImagePolicy(pull_seconds=pull_seconds, preloaded=(PAUSE,))
    async with running_cluster(nodes, tmp_path / "pods", image_policy=policy) as c:
        controller = DaemonSetController(c.store)
        await controller.start()
        try:
            yield c, controller
        finally:
            await controller.stop()


async def wait_daemonset(c: Cluster, name: str, predicate: Callable[[JSON], bool],
                         timeout: float = 20) -> JSON:
    """Watch the DaemonSet until ``predicate`` holds for it."""
    watch = c.store.watch(DAEMONSETS, "default", field_selector=f"metadata.name={name}",
                          send_initial=True)
    try:
        async with asyncio.timeout(timeout):
            async for etype, obj in watch:
                if etype != "DELETED" and predicate(obj):
                    return obj
    finally:
        watch.close()
    raise AssertionError(f"daemonset {name} never matched")  # pragma: no cover


async def wait_events(c: Cluster, name: str, reason: str, timeout: float = 20) -> None:
    """Watch Events until one with ``reason`` names the pod ``name``."""
    watch = c.store.watch(("", "events"), "default", send_initial=True)
    try:
        async with asyncio.timeout(timeout):
            async for _etype, event in watch:
                if event["involvedObject"].get("name") == name and event["reason"] == reason:
                    return
    finally:
        watch.close()


def rolled_out(ds: JSON) -> bool:
    """What ``kubectl rollout status daemonset`` waits for."""
    status = ds.get("status") or {}
    desired = status.get("desiredNumberScheduled")
    return (status.get("observedGeneration") == ds["metadata"].get("generation")
            and desired is not None
            and status.get("updatedNumberScheduled") == desired
            and status.get("numberReady") == desired)


def daemon_pods(c: Cluster, name: str) -> list[JSON]:
    items, _ = c.store.list(PODS, "default", label_selector=f"app={name}")
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


async def test_one_pod_per_selected_node_and_images_pulled_there(tmp_path: Path) -> None:
    async with cluster_with_controller(tmp_path, [GPU_NODE, GPU_NODE_2, CPU_NODE]) as (c, _):
        c.store.create(DAEMONSETS, "default", daemonset(
            "puller", ["kernel:gpu", "kernel:extra"],
            nodeSelector={"nvidia.com/gpu.present": "true"}))
        ds = await wait_daemonset(c, "puller", rolled_out)
        assert ds["status"]["desiredNumberScheduled"] == 2
        pods = daemon_pods(c, "puller")
        assert sorted(p["spec"]["nodeName"] for p in pods) == ["gpu-0", "gpu-1"]
        for p in pods:
            owner = p["metadata"]["ownerReferences"][0]
            assert (owner["kind"], owner["controller"]) == ("DaemonSet", True)
            assert p["metadata"]["name"].startswith("puller-")
            # Init containers ran in order and completed; the pause container runs.
            inits = p["status"]["initContainerStatuses"]
            assert [s["name"] for s in inits] == ["pull-0", "pull-1"]
            assert all(s["state"]["terminated"]["exitCode"] == 0 for s in inits)
            assert "running" in p["status"]["containerStatuses"][0]["state"]
            pulled = [e["message"] for e in events_for(c.store, p["metadata"]["name"], "Pulled")]
            assert any(m.startswith('Successfully pulled image "kernel:gpu" in ') for m in pulled)
            assert any('"registry.k8s.io/pause:3.10" already present' in m for m in pulled)
        assert c.kubelet is not None
        for node in ("gpu-0", "gpu-1"):
            assert "docker.io/library/kernel:gpu" in c.kubelet.pulls.images(node)
        assert "docker.io/library/kernel:gpu" not in c.kubelet.pulls.images("cpu-0")

        # A later pod on a node that pulled finds the image there: no Pulling event.
        c.store.create(PODS, "default", pod("user", ["sleep", "30"], image="kernel:gpu",
                                            nodeName="gpu-0"))
        await wait_pod(c.store, "user", lambda p: "running" in (
            ((p or {}).get("status") or {}).get("containerStatuses") or [{}])[0].get("state", {}))
        assert events_for(c.store, "user", "Pulling") == []
        assert [e["message"] for e in events_for(c.store, "user", "Pulled")] == [
            'Container image "kernel:gpu" already present on machine']


async def test_template_change_rolls_pods_and_new_nodes_get_one(tmp_path: Path) -> None:
    async with cluster_with_controller(tmp_path, [GPU_NODE, CPU_NODE]) as (c, _):
        c.store.create(DAEMONSETS, "default", daemonset("puller", ["img:a"]))
        ds = await wait_daemonset(c, "puller", rolled_out)
        assert ds["status"]["desiredNumberScheduled"] == 2
        first = {p["metadata"]["name"] for p in daemon_pods(c, "puller")}

        changed = copy.deepcopy(ds)
        changed["spec"]["template"]["spec"]["initContainers"].append(
            {"name": "pull-1", "image": "img:b", "command": ["true"]})
        changed.pop("status")
        c.store.replace(DAEMONSETS, "default", "puller", changed)
        ds = await wait_daemonset(c, "puller", lambda d: rolled_out(d) and d["metadata"][
            "generation"] == 2)
        pods = daemon_pods(c, "puller")
        assert {p["metadata"]["name"] for p in pods}.isdisjoint(first)
        assert {p["metadata"]["labels"][REVISION_LABEL] for p in pods} == {
            daemon_pod(ds, "x")["metadata"]["labels"][REVISION_LABEL]}
        assert {p["metadata"]["labels"]["pod-template-generation"] for p in pods} == {"2"}
        assert c.kubelet is not None
        assert "docker.io/library/img:b" in c.kubelet.pulls.images("cpu-0")

        register_node(c.store, NodeConfig("cpu-1"))
        ds = await wait_daemonset(c, "puller", lambda d: rolled_out(d) and d["status"][
            "desiredNumberScheduled"] == 3)
        assert sorted(p["spec"]["nodeName"] for p in daemon_pods(c, "puller")) == [
            "cpu-0", "cpu-1", "gpu-0"]


async def test_taints_need_tolerations(tmp_path: Path) -> None:
    tainted = NodeConfig("gpu-t", gpus=1, taints=[{"key": "nvidia.com/gpu", "value": "present",
                                                   "effect": "NoSchedule"}])
    async with cluster_with_controller(tmp_path, [tainted, CPU_NODE]) as (c, _):
        c.store.create(DAEMONSETS, "default", daemonset("plain", ["img:a"]))
        c.store.create(DAEMONSETS, "default", daemonset(
            "tolerant", ["img:a"],
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]))
        await wait_daemonset(c, "plain", rolled_out)
        await wait_daemonset(c, "tolerant", rolled_out)
        assert [p["spec"]["nodeName"] for p in daemon_pods(c, "plain")] == ["cpu-0"]
        assert sorted(p["spec"]["nodeName"] for p in daemon_pods(c, "tolerant")) == [
            "cpu-0", "gpu-t"]


async def test_deleting_the_daemonset_removes_its_pods(tmp_path: Path) -> None:
    async with cluster_with_controller(tmp_path, [CPU_NODE]) as (c, _):
        c.store.create(DAEMONSETS, "default", daemonset("puller", ["img:a"]))
        await wait_daemonset(c, "puller", rolled_out)
        (only,) = daemon_pods(c, "puller")
        c.store.delete(DAEMONSETS, "default", "puller", propagation_policy="Background")
        await wait_pod(c.store, only["metadata"]["name"], lambda p: p is None)


async def test_pod_security_refusal_is_a_failed_create_event(tmp_path: Path) -> None:
    async with cluster_with_controller(tmp_path, [CPU_NODE]) as (c, _):
        ns = c.store.get(("", "namespaces"), None, "default")
        ns["metadata"].setdefault("labels", {})["pod-security.kubernetes.io/enforce"] = \
            "restricted"
        c.store.replace(("", "namespaces"), None, "default", ns)
        c.store.create(DAEMONSETS, "default", daemonset("loose", ["img:a"]))
        deadline = asyncio.get_running_loop().time() + 20
        watch = c.store.watch(("", "events"), "default", send_initial=True)
        try:
            async with asyncio.timeout(max(0.0, deadline - asyncio.get_running_loop().time())):
                async for _etype, event in watch:
                    if event.get("reason") == "FailedCreate":
                        break
        finally:
            watch.close()
        assert event["involvedObject"]["kind"] == "DaemonSet"
        assert 'violates PodSecurity "restricted:latest"' in event["message"]
        assert daemon_pods(c, "loose") == []


async def test_a_cold_pull_waits_in_container_creating(tmp_path: Path) -> None:
    # A pull that outlasts the test: what a pod shows while its image is on the way.
    async with cluster_with_controller(tmp_path, [CPU_NODE], pull_seconds=300) as (c, _):
        for name in ("a", "b"):
            c.store.create(PODS, "default", pod(name, ["sleep", "30"], image="big:1",
                                                nodeName="cpu-0"))
        for name in ("a", "b"):
            await wait_events(c, name, "Pulling")
            p = c.store.get(PODS, "default", name)
            assert (p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                    == "ContainerCreating")
            (pulling,) = events_for(c.store, name, "Pulling")
            assert pulling["message"] == 'Pulling image "big:1"'
        assert c.kubelet is not None
        # Two pods, one download.
        assert c.kubelet.pulls.pulling("cpu-0") == ["docker.io/library/big:1"]


async def test_concurrent_pulls_of_one_image_both_finish(tmp_path: Path) -> None:
    async with cluster_with_controller(tmp_path, [CPU_NODE], pull_seconds=0.3) as (c, _):
        for name in ("a", "b"):
            c.store.create(PODS, "default", pod(name, ["sleep", "30"], image="big:1",
                                                nodeName="cpu-0"))
        for name in ("a", "b"):
            await wait_pod(c.store, name, lambda p: "running" in (
                ((p or {}).get("status") or {}).get("containerStatuses") or [{}])[0].get(
                    "state", {}))
            (pulled,) = events_for(c.store, name, "Pulled")
            assert pulled["message"].startswith('Successfully pulled image "big:1" in ')
        assert c.kubelet is not None
        assert c.kubelet.pulls.images("cpu-0") == ["docker.io/library/big:1", PAUSE]
        assert c.kubelet.pulls.pulling("cpu-0") == []


async def test_never_policy_needs_the_image_on_the_node(tmp_path: Path) -> None:
    async with cluster_with_controller(tmp_path, [CPU_NODE]) as (c, _):
        c.store.create(PODS, "default", pod("never", ["sleep", "30"], image="absent:1",
                                            container={"imagePullPolicy": "Never"}))
        p = await wait_pod(c.store, "never", lambda p: (((p or {}).get("status") or {}).get(
            "containerStatuses") or [{}])[0].get("state", {}).get("waiting", {}).get(
                "reason") == "ErrImageNeverPull")
        assert p is not None
        assert events_for(c.store, "never", "Pulling") == []


def test_max_unavailable_and_pause_images() -> None:
    ds = daemonset("x", [])
    assert max_unavailable(ds, 7) == 7  # 100 %
    ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] = "10%"
    assert max_unavailable(ds, 7) == 1  # rounded up, never 0
    ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] = 2
    assert max_unavailable(ds, 7) == 2
    assert is_pause_image(PAUSE) and is_pause_image("localhost:5000/pause")
    assert not is_pause_image("python:3.11")
    with pytest.raises(ValueError, match="pull_seconds"):
        ImagePolicy(pull_seconds=-1)
