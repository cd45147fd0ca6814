"""Running the install's own pods on the local cluster, and a representative kernel session.

The pods are made from the rendered manifests' pod templates (``kubectl kustomize deploy/``), as
the Deployment's ReplicaSet or the CronJob's Job would make them, and created with kubectl; the
local cluster's kubelet runs them as processes with the downward-API variables, the mounted
Secrets and the ServiceAccount token filled in. So a test proves the manifests' command lines,
environment and rights, not copies of them.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import typing as t
from collections import Counter
from pathlib import Path

import yaml

from elastic_kernels.localcluster.cluster import LocalCluster
from tests.gateway.support import KernelWS, api, json_of

from .manifests import JSON, NAMESPACE, find, pod_spec

Request = tuple[str, str, str, str]  # verb, group, resource, subresource


def container_of(docs: list[JSON], kind: str, name: str) -> JSON:
    (container,) = pod_spec(find(docs, kind, name))["containers"]
    return t.cast(JSON, container)


def template_pod(template: JSON, name: str, namespace: str,
                 labels: t.Mapping[str, str] | None = None) -> JSON:
    """A pod as a controller makes one from its pod template (labels, annotations, spec)."""
    template = copy.deepcopy(template)
    meta = template.get("metadata") or {}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {**meta.get("labels", {}), **(labels or {})},
                         **({"annotations": meta["annotations"]}
                            if meta.get("annotations") else {})},
            "spec": template["spec"]}


def local_pod(deployment: JSON, name: str, namespace: str) -> JSON:
    """A pod as the Deployment's ReplicaSet would create it, for the local cluster to run.

    One change: the manifest's ``--ip=0.0.0.0`` (every interface of the pod's own network
    namespace) becomes ``--ip=$(POD_IP)``, the pod's private 127.x address: the local cluster's
    pods are processes on this host.
    """
    pod = template_pod(deployment["spec"]["template"], name, namespace,
                       {"pod-template-hash": POD_TEMPLATE_HASH})
    (container,) = pod["spec"]["containers"]
    assert "--ip=0.0.0.0" in container["args"]
    container["args"] = ["--ip=$(POD_IP)" if a == "--ip=0.0.0.0" else a
                         for a in container["args"]]
    container["env"].insert(0, {"name": "POD_IP",
                                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    return pod


#: What a ReplicaSet's pods carry in their name and ``pod-template-hash`` label.
POD_TEMPLATE_HASH = "5d8f7c9b64"


def replica_name(deployment: str) -> str:
    """A new name as a Deployment's ReplicaSet gives its pods: ``<deployment>-<hash>-<5>``."""
    return f"{deployment}-{POD_TEMPLATE_HASH}-{secrets.token_hex(3)[:5]}"


class Pods:
    """Pods a test creates with kubectl, as the admin or a controller would; ``delete_all()``
    (in the test's ``finally``) deletes every one still there, even when the test failed.

    A create must pass admission without a warning: the install's namespace warns about (and
    enforces) Pod Security ``restricted``, so a pod that would break it is named here.
    """

    def __init__(self, kubectl: t.Any) -> None:
        self.kubectl = kubectl
        self.names: list[str] = []

    async def create(self, pod: JSON) -> str:
        name = t.cast(str, pod["metadata"]["name"])
        created = await self.kubectl.run("create", "-f", "-", stdin=yaml.safe_dump(pod))
        assert created.returncode == 0, created.stderr
        self.names.append(name)
        assert "Warning" not in created.stderr, created.stderr
        return name

    async def get(self, name: str) -> JSON:
        return t.cast(JSON, await self.kubectl.json("get", "-n", NAMESPACE, "pod", name))

    async def running(self, pod: JSON, timeout: int = 60) -> JSON:
        """Create the pod; once it runs, the pod as the API shows it."""
        name = await self.create(pod)
        waited = await self.kubectl.run(
            "wait", "-n", NAMESPACE, "--for=jsonpath={.status.phase}=Running", f"pod/{name}",
            f"--timeout={timeout}s")
        assert waited.returncode == 0, (waited.stderr, await self.get(name))
        return await self.get(name)

    async def completed(self, pod: JSON, timeout: float = 60) -> JSON:
        """Create the pod and wait until it has ended (phase Succeeded or Failed)."""
        name = await self.create(pod)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            got = await self.get(name)
            if got.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                return got
            assert loop.time() < deadline, f"pod {name} did not end: {got.get('status')}"
            await asyncio.sleep(0.3)

    async def logs(self, name: str) -> str:
        return t.cast(str, await self.kubectl("logs", "-n", NAMESPACE, name))

    async def delete(self, name: str) -> None:
        """Delete the pod and wait until it is gone (its process has ended)."""
        await self.kubectl("delete", "-n", NAMESPACE, "pod", name, "--wait=true",
                           "--timeout=60s")
        self.names.remove(name)

    async def show_logs(self, lines: int = 150) -> None:
        """Print the end of each pod's log: what a failed test's report must carry."""
        for name in self.names:
            got = await self.kubectl.run("logs", "-n", NAMESPACE, name, f"--tail={lines}")
            print(f"--- pod {name}: the last {lines} lines of its log ---\n"
                  f"{got.stdout or got.stderr}")

    async def delete_all(self) -> None:
        for name in reversed(self.names):
            await self.kubectl.run("delete", "-n", NAMESPACE, "pod", name, "--wait=true",
                                   "--timeout=60s")
        self.names.clear()


async def kernel_session(url: str, token: str, kernel_name: str) -> dict[str, t.Any]:
    """Start, execute, interrupt, restart, execute again and shut down one kernel via the API."""
    facts: dict[str, t.Any] = {}
    specs = await api(url, "GET", "/api/kernelspecs", token=token)
    assert specs.code == 200, specs.body
    facts["kernelspecs"] = sorted(json_of(specs)["kernelspecs"])
    started = await api(url, "POST", "/api/kernels", {"name": kernel_name}, token=token)
    assert started.code == 201, started.body
    kernel = json_of(started)
    kid = kernel["id"]
    ws = await KernelWS.open(url, kid, token=token)
    try:
        first = await ws.execute("import os; x = 6 * 7; print(x, os.getpid())", timeout=60)
        assert first["reply"]["status"] == "ok", first
        facts["first"] = first["stdout"].split()
    finally:
        ws.close()
    interrupted = await api(url, "POST", f"/api/kernels/{kid}/interrupt", token=token)
    assert interrupted.code == 204, interrupted.body
    restarted = await api(url, "POST", f"/api/kernels/{kid}/restart", token=token)
    assert restarted.code == 200, restarted.body
    ws = await KernelWS.open(url, kid, token=token)
    try:
        second = await ws.execute("print('x' in globals())", timeout=60)
        assert second["reply"]["status"] == "ok", second
        facts["after_restart"] = second["stdout"].strip()
    finally:
        ws.close()
    model = await api(url, "GET", f"/api/kernels/{kid}", token=token)
    assert model.code == 200, model.body
    facts["model"] = json_of(model)
    deleted = await api(url, "DELETE", f"/api/kernels/{kid}", token=token)
    assert deleted.code == 204, deleted.body
    facts["kernel_id"] = kid
    return facts


def requests_since(cluster: LocalCluster, snapshot: Counter) -> dict[Request, int]:
    """Resource requests made after ``snapshot``, by (verb, group, resource, subresource).

    Every one of them must be in the install's namespace: the Roles are namespaced.
    """
    used: Counter[Request] = Counter()
    for (verb, group, resource, sub, namespace), n in cluster.request_counter.since(
            snapshot).items():
        assert namespace == NAMESPACE, (verb, group, resource, sub, namespace)
        used[(verb, group, resource, sub)] += n
    return dict(used)


def requests_by(cluster: LocalCluster, user: str) -> dict[Request, int]:
    """Resource requests ``user`` made, by (verb, group, resource, subresource).

    Every one of them must be in the install's namespace: the Roles are namespaced.
    """
    used: Counter[Request] = Counter()
    for (who, verb, group, resource, sub, namespace), n in \
            cluster.request_counter.by_user().items():
        if who != user:
            continue
        assert namespace == NAMESPACE, (verb, group, resource, sub, namespace)
        used[(verb, group, resource, sub)] += n
    return dict(used)


def denials_of(cluster: LocalCluster, user: str) -> list[tuple[str, ...]]:
    """Requests of ``user`` that authorization refused (verb, group or path, resource, ...)."""
    return sorted(key[1:] for key in cluster.request_counter.denied if key[0] == user)


def service_account_user(name: str) -> str:
    return f"system:serviceaccount:{NAMESPACE}:{name}"


async def service_account_kubeconfig(cluster: LocalCluster, kubectl: t.Any, name: str,
                                     path: Path) -> Path:
    """A kubeconfig that authenticates as ServiceAccount ``name`` of the install's namespace,
    with a token from ``kubectl create token`` (the cluster's CA, as in the admin's)."""
    token = (await kubectl("create", "token", name, "-n", NAMESPACE, "--duration=1h")).strip()
    return cluster.write_kubeconfig(path, namespace=NAMESPACE, token=token)


async def wait_serving(url: str, timeout: float = 60) -> None:
    """Until GET /api (the probes' endpoint; no token needed) answers 200.

    A server may log its URL a moment before it accepts connections.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            if (await api(url, "GET", "/api", token=None)).code == 200:
                return
        except OSError:
            pass
        if loop.time() > deadline:
            raise AssertionError(f"{url}/api did not answer within {timeout:.0f}s")
        await asyncio.sleep(0.2)


def new_token() -> str:
    return secrets.token_hex(16)


def dump(path: Path, docs: list[JSON]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path
