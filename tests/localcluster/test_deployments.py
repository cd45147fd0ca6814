"""The local cluster's opt-in Deployment controller, through the real API with the real kubectl.

A cluster started with ``controllers={"deployment"}``: Deployments applied with kubectl get their
pods (labels, ``pod-template-hash``, the Deployment as controlling owner), a deleted pod is
replaced, a template change rolls (RollingUpdate within maxSurge/maxUnavailable, Recreate), the
replicas scale to 0 and back, Pod Security's refusal is a ``FailedCreate`` Event, ``kubectl
rollout status`` and ``kubectl wait --for=condition=Available`` finish, and deleting the
Deployment deletes its pods. Without the option nothing runs a Deployment's pods.

Waits are kubectl's own (``rollout status``, ``wait``), which watch; where no kubectl command
can say what to wait for (a pod with another name), the pods are listed again until it holds.
The two rollout tests also watch the store itself, to see every pod a rollout had at any moment.
Every cluster, and with it every pod process, is stopped by the fixture.
"""

from __future__ import annotations

import asyncio
import json
import typing as t
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from elastic_kernels.cli import cluster_controllers, main
from elastic_kernels.localcluster.cluster import LocalCluster
from elastic_kernels.localcluster.deployments import (HASH_LABEL, deletion_order, fenceposts,
                                                      template_hash)

from tests.kubectl import Kubectl as KubectlBase

pytestmark = [pytest.mark.kubectl, pytest.mark.timeout(90)]

JSON = dict[str, t.Any]
PAUSE = "registry.k8s.io/pause:3.10"
RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
              "runAsNonRoot": True, "runAsUser": 1000,
              "seccompProfile": {"type": "RuntimeDefault"}}


class Kubectl(KubectlBase):
    """The real kubectl with the cluster's admin kubeconfig, and the few questions these tests
    ask it."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(cluster.kubeconfig_path, cluster.workdir)

    async def apply(self, *docs: JSON) -> str:
        return await self.apply_docs(list(docs))

    async def pods(self, name: str) -> list[JSON]:
        """The Deployment ``name``'s pods that are not being deleted, oldest first."""
        items = (await self.json("get", "pods", "-l", f"app={name}"))["items"]
        return sorted((p for p in items if not p["metadata"].get("deletionTimestamp")),
                      key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))

    async def rolled_out(self, name: str) -> str:
        return await self("rollout", "status", f"deployment/{name}", "--timeout=60s")


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    """Ask again until ``check`` holds (for waits no kubectl command can express)."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {what}") from None


def deployment(name: str, replicas: int | None = 2, *, strategy: JSON | None = None,
               restricted: bool = True, env: str = "one") -> JSON:
    """A Deployment of pause containers (``sleep infinity`` here); ``env`` varies the template."""
    labels = {"app": name}
    container: JSON = {"name": "main", "image": PAUSE, "env": [{"name": "V", "value": env}]}
    if restricted:
        container["securityContext"] = RESTRICTED
    spec: JSON = {"selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": {**labels, "tier": "test"},
                                            "annotations": {"note": "kept"}},
                               "spec": {"containers": [container],
                                        "terminationGracePeriodSeconds": 1}}}
    if replicas is not None:
        spec["replicas"] = replicas
    if strategy is not None:
        spec["strategy"] = strategy
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """Two CPU nodes with the Deployment controller; stopped (every pod with it) after the test."""
    c = LocalCluster(nodes=2, gpus_per_node=0, workdir=tmp_path / "cluster",
                     crash_backoff_seconds=0.2, controllers={"deployment"})
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@pytest.fixture
def kubectl(cluster: LocalCluster) -> Kubectl:
    return Kubectl(cluster)


async def test_pods_of_the_template_owned_by_the_deployment(kubectl: Kubectl) -> None:
    await kubectl.apply(deployment("web"))
    out = await kubectl.rolled_out("web")
    assert out.strip().endswith('deployment "web" successfully rolled out'), out
    await kubectl("wait", "--for=condition=Available", "deployment/web", "--timeout=60s")
    got = await kubectl.json("get", "deployment", "web")
    uid, revision = got["metadata"]["uid"], template_hash(got)
    pods = await kubectl.pods("web")
    assert len(pods) == 2
    for pod in pods:
        meta = pod["metadata"]
        assert meta["labels"] == {"app": "web", "tier": "test", HASH_LABEL: revision}
        assert meta["annotations"] == {"note": "kept"}
        assert meta["generateName"] == f"web-{revision}-"
        assert meta["name"].startswith(f"web-{revision}-")
        assert meta["ownerReferences"] == [{"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": "web", "uid": uid, "controller": True,
                                            "blockOwnerDeletion": True}]
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["containers"][0]["env"] == [{"name": "V", "value": "one"}]

    status = got["status"]
    assert {k: v for k, v in status.items() if k != "conditions"} == {
        "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
        "availableReplicas": 2}
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Available"]["status"], conditions["Available"]["reason"],
            conditions["Available"]["message"]) == (
        "True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
    assert (conditions["Progressing"]["status"], conditions["Progressing"]["reason"],
            conditions["Progressing"]["message"]) == (
        "True", "NewReplicaSetAvailable",
        f'ReplicaSet "web-{revision}" has successfully progressed.')
    events = (await kubectl.json("get", "events", "--field-selector",
                                 "involvedObject.name=web"))["items"]
    assert sorted(e["message"] for e in events if e["reason"] == "SuccessfulCreate") == sorted(
        f"Created pod: {p['metadata']['name']}" for p in pods)


async def test_a_deleted_pod_is_replaced(kubectl: Kubectl) -> None:
    await kubectl.apply(deployment("web"))
    await kubectl.rolled_out("web")
    first = {p["metadata"]["name"] for p in await kubectl.pods("web")}
    gone = sorted(first)[0]
    await kubectl("delete", "pod", gone, "--wait=true", "--timeout=60s")

    async def replaced() -> bool:
        names = {p["metadata"]["name"] for p in await kubectl.pods("web")}
        return len(names) == 2 and gone not in names

    await until(replaced, "the deleted pod was replaced")
    await kubectl.rolled_out("web")
    now = {p["metadata"]["name"] for p in await kubectl.pods("web")}
    assert len(now - first) == 1 and first - now == {gone}
    await kubectl("wait", "--for=condition=Available", "deployment/web", "--timeout=60s")


async def test_a_template_change_rolls_within_surge_and_unavailability(
        cluster: LocalCluster, kubectl: Kubectl) -> None:
    rolling = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    await kubectl.apply(deployment("web", 3, strategy=rolling))
    await kubectl.rolled_out("web")
    before = {p["metadata"]["name"] for p in await kubectl.pods("web")}

    # Every pod the rollout ever had, from the store's own watch: never more than 3 + 1 at once
    # and never fewer than 3 ready (maxUnavailable 0).
    most, fewest_ready = 0, 3
    live: dict[str, JSON] = {}
    watch = cluster.store.watch(("", "pods"), "default", label_selector="app=web")

    async def observe() -> None:
        nonlocal most, fewest_ready
        async for etype, pod in watch:
            name = pod["metadata"]["name"]
            if etype == "DELETED" or pod["metadata"].get("deletionTimestamp"):
                live.pop(name, None)
            else:
                live[name] = pod
            most = max(most, len(live))
            fewest_ready = min(fewest_ready, sum(1 for p in live.values() if ready(p)))

    for pod in await kubectl.pods("web"):
        live[pod["metadata"]["name"]] = pod
    observer = asyncio.ensure_future(observe())
    try:
        await kubectl("set", "env", "deployment/web", "V=two")
        out = await kubectl.rolled_out("web")
        assert 'deployment "web" successfully rolled out' in out
    finally:
        observer.cancel()
        watch.close()
    after = await kubectl.pods("web")
    got = await kubectl.json("get", "deployment", "web")
    assert got["status"]["observedGeneration"] == got["metadata"]["generation"] == 2
    assert {p["metadata"]["labels"][HASH_LABEL] for p in after} == {template_hash(got)}
    assert {p["spec"]["containers"][0]["env"][0]["value"] for p in after} == {"two"}
    assert len(after) == 3 and before.isdisjoint(p["metadata"]["name"] for p in after)
    assert most <= 4 and fewest_ready >= 3, (most, fewest_ready)
    progressing = next(c for c in got["status"]["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "NewReplicaSetAvailable"
    assert f'"web-{template_hash(got)}"' in progressing["message"]


def ready(pod: JSON) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


async def test_recreate_deletes_the_old_pods_before_making_new_ones(
        cluster: LocalCluster, kubectl: Kubectl) -> None:
    await kubectl.apply(deployment("web", strategy={"type": "Recreate"}))
    await kubectl.rolled_out("web")
    old_hash = template_hash(await kubectl.json("get", "deployment", "web"))
    # The pods whose containers may still run (being deleted too: until the kubelet reports
    # them ended), from the store's own watch.
    overlap: list[set[str]] = []
    running: dict[str, str] = {}
    watch = cluster.store.watch(("", "pods"), "default", label_selector="app=web",
                                send_initial=True)

    async def observe() -> None:
        async for etype, pod in watch:
            name = pod["metadata"]["name"]
            if etype == "DELETED" or pod["status"].get("phase") in ("Succeeded", "Failed"):
                running.pop(name, None)
            else:
                running[name] = pod["metadata"]["labels"][HASH_LABEL]
            if len(set(running.values())) > 1:
                overlap.append(set(running.values()))

    observer = asyncio.ensure_future(observe())
    try:
        await kubectl("set", "env", "deployment/web", "V=two")
        await kubectl.rolled_out("web")
    finally:
        observer.cancel()
        watch.close()
    new_hash = template_hash(await kubectl.json("get", "deployment", "web"))
    assert {p["metadata"]["labels"][HASH_LABEL] for p in await kubectl.pods("web")} == {new_hash}
    assert old_hash != new_hash
    assert not overlap, "a new pod existed while an old one had not ended"


async def test_scale_to_zero_and_back(kubectl: Kubectl) -> None:
    await kubectl.apply(deployment("web"))
    await kubectl.rolled_out("web")
    # No scale subresource here (`kubectl scale`): spec.replicas is patched instead.
    await kubectl("patch", "deployment", "web", "-p", '{"spec": {"replicas": 0}}')
    out = await kubectl.rolled_out("web")
    assert "successfully rolled out" in out

    async def none_left() -> bool:
        return not (await kubectl.json("get", "pods", "-l", "app=web"))["items"]

    await until(none_left, "every pod of the Deployment is gone")
    status = (await kubectl.json("get", "deployment", "web"))["status"]
    assert {k: v for k, v in status.items() if k != "conditions"} == {"observedGeneration": 2}
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Available": "True", "Progressing": "True"}

    await kubectl("patch", "deployment", "web", "-p", '{"spec": {"replicas": 3}}')
    await kubectl.rolled_out("web")
    assert len(await kubectl.pods("web")) == 3
    status = (await kubectl.json("get", "deployment", "web"))["status"]
    assert (status["replicas"], status["readyReplicas"], status["observedGeneration"]) == (3, 3, 3)


async def test_replicas_default_to_one_and_ended_pods_are_replaced(
        cluster: LocalCluster, kubectl: Kubectl) -> None:
    await kubectl.apply(deployment("web", None))
    await kubectl.rolled_out("web")
    (pod,) = await kubectl.pods("web")
    name = pod["metadata"]["name"]
    # A pod that has ended (as after an eviction) no longer counts: another one is made, and
    # the ended one is left for the pod garbage collector, as on a cluster.
    ended = {**pod, "status": {**pod["status"], "phase": "Failed", "reason": "Evicted",
                               "conditions": [{"type": "Ready", "status": "False"}]}}
    await kubectl("replace", "--subresource=status", "-f", "-", stdin=json.dumps(ended))

    async def replaced() -> bool:
        return [p["metadata"]["name"] for p in await kubectl.pods("web")
                if p["status"].get("phase") == "Running"] not in ([], [name])

    await until(replaced, "a pod replaced the ended one")
    await kubectl.rolled_out("web")
    status = (await kubectl.json("get", "deployment", "web"))["status"]
    assert (status["replicas"], status["availableReplicas"]) == (1, 1)


async def test_pod_security_refusal_is_a_failed_create_event(kubectl: Kubectl) -> None:
    await kubectl("label", "namespace", "default", "pod-security.kubernetes.io/enforce=restricted")
    await kubectl.apply(deployment("loose", 1, restricted=False))

    async def refused() -> bool:
        return bool(await failed_creates(kubectl, "loose"))

    await until(refused, "a FailedCreate Event")
    (event,) = await failed_creates(kubectl, "loose")
    revision = template_hash(await kubectl.json("get", "deployment", "loose"))
    assert event["type"] == "Warning"
    assert event["involvedObject"]["kind"] == "Deployment"
    assert event["source"]["component"] == "deployment-controller"
    assert event["message"].startswith(
        f'Error creating: pods "loose-{revision}-" is forbidden: violates PodSecurity '
        '"restricted:latest": '), event["message"]
    assert "allowPrivilegeEscalation != false" in event["message"]
    assert await kubectl.pods("loose") == []
    got = await kubectl.json("get", "deployment", "loose")
    assert got["status"].get("replicas") is None and got["status"]["unavailableReplicas"] == 1
    code, out, err = await kubectl.run("rollout", "status", "deployment/loose", "--timeout=1s")
    assert code != 0 and "0 out of 1 new replicas have been updated" in out, (out, err)

    # The next change is tried again: a template that meets the policy gets its pod.
    await kubectl.apply(deployment("loose", 1, restricted=True))
    await kubectl.rolled_out("loose")
    assert len(await kubectl.pods("loose")) == 1


async def failed_creates(kubectl: Kubectl, name: str) -> list[JSON]:
    items = (await kubectl.json("get", "events", "--field-selector",
                                f"involvedObject.name={name}"))["items"]
    return [e for e in items if e["reason"] == "FailedCreate"]


async def test_deleting_the_deployment_deletes_its_pods(kubectl: Kubectl) -> None:
    await kubectl.apply(deployment("web"))
    await kubectl.rolled_out("web")
    names = [p["metadata"]["name"] for p in await kubectl.pods("web")]
    await kubectl("delete", "deployment", "web")
    await kubectl("wait", "--for=delete", *(f"pod/{n}" for n in names), "--timeout=60s")
    assert (await kubectl.json("get", "pods", "-l", "app=web"))["items"] == []


async def test_off_by_default(tmp_path: Path) -> None:
    async with LocalCluster(nodes=1, gpus_per_node=0, workdir=tmp_path / "cluster") as c:
        assert c.deployment_controller is None
        kubectl = Kubectl(c)
        await kubectl.apply(deployment("web"))
        got = await kubectl.json("get", "deployment", "web")
        assert not got.get("status")
        assert (await kubectl.json("get", "pods"))["items"] == []
    with pytest.raises(ValueError, match="unknown controller.*replicaset.*deployment"):
        LocalCluster(controllers={"replicaset"})


def test_fenceposts_and_deletion_order() -> None:
    d = deployment("web", 4)
    assert fenceposts(d) == (1, 1)  # 25% of 4, the defaults
    d["spec"]["strategy"] = {"rollingUpdate": {"maxSurge": "30%", "maxUnavailable": "30%"}}
    assert fenceposts(d) == (2, 1)  # surge rounds up, unavailability down
    d["spec"]["strategy"] = {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "10%"}}
    assert fenceposts(d) == (0, 1)  # never both 0
    pending = {"metadata": {"name": "a", "creationTimestamp": "2026-01-01T00:00:01Z"},
               "spec": {"nodeName": "n"}, "status": {"phase": "Pending"}}
    unscheduled = {"metadata": {"name": "b", "creationTimestamp": "2026-01-01T00:00:00Z"},
                   "spec": {}, "status": {"phase": "Pending"}}
    old_ready = {"metadata": {"name": "c", "creationTimestamp": "2026-01-01T00:00:00Z"},
                 "spec": {"nodeName": "n"},
                 "status": {"phase": "Running",
                            "conditions": [{"type": "Ready", "status": "True"}]}}
    new_ready = {**old_ready, "metadata": {"name": "d",
                                           "creationTimestamp": "2026-01-01T00:00:05Z"}}
    order = deletion_order([old_ready, new_ready, pending, unscheduled])
    assert [p["metadata"]["name"] for p in order] == ["b", "a", "d", "c"]


def test_the_command_line_names_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cluster_controllers("deployment") == {"deployment"}
    assert cluster_controllers("") == frozenset()
    assert main(["cluster", "--kubeconfig", str(tmp_path / "kc"),
                 "--controllers", "deployment,replicaset"]) == 2
    assert "unknown controller(s) replicaset; the optional ones: deployment" in (
        capsys.readouterr().err)
