"""The gateway and the cull job work under their own Roles, and use all that they are granted.

The local cluster enforces RBAC and OwnerReferencesPermissionEnforcement as kube-apiserver does.
Each component runs with the manifests' own command line and a token of its own ServiceAccount
(``kubectl create token``), bound by the install's Role and RoleBinding. The gateway serves a
whole session -- start, execute, interrupt, restart and shut down a kernel; a GPU start that
queues behind another and is let through (its pod's scheduling gate patched away) when a GPU
frees; a start that fails; per-user tokens from the users Secret, watched by name -- and the
cull job deletes an orphaned kernel. Not one of their requests is refused. Conversely every
grant is used, except the few listed below with the reason they are needed although this
session does not exercise them.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sys
import typing as t
from pathlib import Path

import pytest
import yaml
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from elastic_kernels.kube import resources as R
from elastic_kernels.localcluster.cluster import LocalCluster
from tests.conftest import derived_kernelspec
from tests.gateway.support import api, json_of

from .conftest import Kubectl
from .manifests import DEPLOY, JSON, KERNELSPECS, NAMESPACE, find, load_docs
from .rbac import Grant, fmt, grants
from .session import (
    GatewayProcess,
    container_of,
    denials_of,
    gateway_env,
    host_command,
    kernel_session,
    new_token,
    requests_by,
    service_account_kubeconfig,
    service_account_user,
)

pytestmark = [pytest.mark.kubectl, pytest.mark.timeout(180)]

GROUP = R.GROUP
LEASES = "coordination.k8s.io"
GATEWAY = "elastic-kernels-gateway"
CULL = "elastic-kernels-cull"
USERS_SECRET = "elastic-kernels-users"

#: Granted and needed, but possibly not exercised by the session in this test -- with the reason.
#: (Code that starts using one of them needs no change here; a grant outside these lists that
#: the session does not use fails the test, and so does any request the cluster refused.)
GATEWAY_UNEXERCISED: dict[Grant, str] = {
    ("get", "", "pods", ""): "hydrating a kernel another replica started reads its pod",
    ("get", "", "pods", "log"): "a crashed kernel's last output goes into the start error",
    ("get", "", "secrets", ""): "hydrating a kernel reads its key from the kernel's Secret",
    ("delete", "", "secrets", ""): "cleanup when a start fails between Secret and Pod creation",
    ("get", GROUP, "jupyterkernels", ""): "hydration by kernel id on another replica",
    ("list", GROUP, "jupyterkernels", ""): "the shared JupyterKernel watch (startup hydration)",
    ("watch", GROUP, "jupyterkernels", ""): "the shared JupyterKernel watch (startup hydration)",
    ("patch", GROUP, "jupyterkernels", ""): "adopting a kernel: spec.gateway (gateway/lease.py)",
    ("create", LEASES, "leases", ""): "the gateway's own Lease, created at startup",
    ("get", LEASES, "leases", ""): "renewing the gateway's Lease (gateway/lease.py)",
    ("patch", LEASES, "leases", ""): "renewing the gateway's Lease (gateway/lease.py)",
    ("delete", LEASES, "leases", ""): "releasing the Lease on a deliberate shutdown",
    # Never requested: the API server asks it on the gateway's behalf when the gateway creates a
    # kernel's Pod and Secret (blockOwnerDeletion); the test shows the create fails without it.
    ("update", GROUP, "jupyterkernels", "finalizers"): "OwnerReferencesPermissionEnforcement",
}
CULL_UNEXERCISED: dict[Grant, str] = {
    ("get", GROUP, "jupyterkernels", ""): "re-reading a record after a conflicting write, to "
                                          "tell 'culled by someone else' from 'fresh activity'",
}


RECLAIMABLE = "python-gpu-shared"


@pytest.fixture
def install_cluster_shape() -> tuple[int, int]:
    """One node with one GPU: a second GPU kernel must wait for it."""
    return 1, 1


def role_rules(path: Path) -> list[JSON]:
    (role,) = load_docs(path.read_text(), str(path))
    assert role["kind"] == "Role"
    return t.cast(list[JSON], role["rules"])


def check_grants(rules: list[JSON], used: t.Mapping[Grant, int],
                 unexercised: dict[Grant, str], who: str) -> None:
    granted = grants(rules)
    unexplained = granted - set(used) - set(unexercised)
    assert not unexplained, f"the {who} Role grants what nobody used: {fmt(unexplained)}"
    # The list of exceptions stays honest: each one is granted.
    assert set(unexercised) <= granted, fmt(set(unexercised) - granted)


def test_the_grant_checker_itself() -> None:
    rules = [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get"]}]
    assert grants(rules) == {("get", "", "pods", ""), ("get", "", "pods", "log")}
    with pytest.raises(AssertionError, match="grants what nobody used"):
        check_grants(rules, {("get", "", "pods", ""): 1}, {}, "test")
    check_grants(rules, {("get", "", "pods", ""): 1},
                 {("get", "", "pods", "log"): "the reason"}, "test")
    with pytest.raises(AssertionError, match="wildcard"):
        grants([{"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]}])


def users_secret(**tokens: str) -> JSON:
    document = {"tokens": [{"user": user, "token": token} for user, token in tokens.items()]}
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": USERS_SECRET, "namespace": NAMESPACE},
            "stringData": {"users.yaml": yaml.safe_dump(document)}}


async def start_kernel(url: str, token: str, name: str) -> str:
    """POST /api/kernels, allowing for the wait in the GPU queue; the kernel id."""
    request = HTTPRequest(f"{url}/api/kernels", method="POST", body=f'{{"name": "{name}"}}',
                          headers={"Authorization": f"token {token}",
                                   "Content-Type": "application/json"},
                          request_timeout=120)
    response = await AsyncHTTPClient().fetch(request, raise_error=False)
    assert response.code == 201, response.body
    return t.cast(str, json_of(response)["id"])


async def gpu_queue(url: str, token: str) -> list[JSON]:
    status = await api(url, "GET", "/api/elastic/status", token=token)
    assert status.code == 200, status.body
    return t.cast(list[JSON], json_of(status)["gpu_queue"])


async def until(check: t.Callable[[], t.Awaitable[bool]], what: str,
                timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.1)


async def shut_down(url: str, token: str, kernel_id: str) -> None:
    response = await api(url, "DELETE", f"/api/kernels/{kernel_id}", token=token)
    assert response.code == 204, response.body


async def gpu_starts_queue_and_are_let_through(url: str, token: str) -> None:
    """The node's one GPU is held; two more GPU starts wait, the second one gated behind the
    first. Each time the GPU frees, the head of the queue gets it; the second start's pod is
    scheduled only once the gateway has patched its scheduling gate away."""
    holder = await start_kernel(url, token, "python-gpu")
    first = asyncio.ensure_future(start_kernel(url, token, "python-gpu"))
    second: asyncio.Future[str] | None = None
    try:
        async def first_waits() -> bool:
            return [w["gated"] for w in await gpu_queue(url, token)] == [False]
        await until(first_waits, "the first GPU start waits")
        second = asyncio.ensure_future(start_kernel(url, token, "python-gpu"))

        async def second_is_gated() -> bool:
            return [w["gated"] for w in await gpu_queue(url, token)] == [False, True]
        await until(second_is_gated, "the second GPU start waits gated behind the first")

        await shut_down(url, token, holder)
        first_id = await asyncio.wait_for(first, 90)
        # Now the second is the head: the gateway lifts its gate (a pod patch); it still waits
        # for the GPU, which the first holds.
        async def second_is_ungated() -> bool:
            return [w["gated"] for w in await gpu_queue(url, token)] == [False]
        await until(second_is_ungated, "the gateway ungated the second start's pod")
        assert not second.done()
        await shut_down(url, token, first_id)
        second_id = await asyncio.wait_for(second, 90)
        await shut_down(url, token, second_id)
    finally:
        for pending in (first, second):
            if pending is not None and not pending.done():
                pending.cancel()
        await asyncio.gather(*(f for f in (first, second) if f is not None),
                             return_exceptions=True)


async def an_idle_gpu_kernel_is_reclaimed_for_a_waiter(url: str, token: str) -> None:
    """The node's one GPU is held by an idle kernel past its spec's reclaimAfter: a new GPU start
    waits, and the gateway reclaims the idle one for it (status, Event and delete, as its
    Role allows)."""
    idle = await start_kernel(url, token, RECLAIMABLE)
    waiter = await asyncio.wait_for(start_kernel(url, token, RECLAIMABLE), 90)
    gone = await api(url, "GET", f"/api/kernels/{idle}", token=token)
    assert gone.code == 404 and json_of(gone)["reason"] == "ReclaimedForWaitingKernel", gone.body
    await shut_down(url, token, waiter)


async def users_secret_is_watched(url: str, kubectl: Kubectl, alice: str, bob: str) -> None:
    """alice's token (in the Secret at startup) works; bob's works once the Secret names him,
    without a restart; deleting the Secret revokes both."""
    async def works(token: str) -> bool:
        return (await api(url, "GET", "/api/kernels", token=token)).code == 200

    assert await works(alice) and not await works(bob)
    await kubectl.apply_docs([users_secret(alice=alice, bob=bob)])

    async def bob_works() -> bool:
        return await works(bob)
    await until(bob_works, "the gateway saw the users Secret change", 30)
    await kubectl("delete", "secret", "-n", NAMESPACE, USERS_SECRET)

    async def revoked() -> bool:
        return not await works(alice) and not await works(bob)
    await until(revoked, "the gateway saw the users Secret go", 30)


async def test_gateway_and_cull_work_under_their_roles_and_use_all_they_grant(
        install_cluster: LocalCluster, kubectl: Kubectl, base_docs: list[JSON],
        tmp_path: Path) -> None:
    cluster = install_cluster
    await kubectl.apply_docs(base_docs)
    await kubectl("apply", "-n", NAMESPACE, "-k", str(KERNELSPECS))
    # A GPU kernelspec whose idle kernels may be reclaimed for a waiting start after 1 s.
    reclaimable = derived_kernelspec("python-gpu", RECLAIMABLE, launchTimeout="90s")
    reclaimable["spec"]["culling"] = {"reclaimAfter": "1s"}
    await kubectl.apply_docs([reclaimable], "-n", NAMESPACE)
    # A kernelspec whose image cannot be pulled: the failure path writes status and an Event.
    await kubectl.apply_docs([derived_kernelspec("python-cpu", "broken-image",
                                                 image="registry.example/does-not-exist:1")],
                             "-n", NAMESPACE)
    alice, bob = new_token(), new_token()
    await kubectl.apply_docs([users_secret(alice=alice)])
    gateway_user = service_account_user(GATEWAY)
    kubeconfig = await service_account_kubeconfig(cluster, kubectl, GATEWAY,
                                                  tmp_path / "gateway.kubeconfig")
    token = new_token()

    # --- the gateway, from the Deployment's container, as its ServiceAccount -------------------
    container = container_of(base_docs, "Deployment", GATEWAY)
    assert f"--users-secret={USERS_SECRET}" in container["args"]
    argv = host_command(container, {"POD_IP": "127.0.0.1", "POD_NAMESPACE": NAMESPACE,
                                    "POD_NAME": "gateway-rbac-test"}, ["--port=0"])
    gateway = GatewayProcess(argv, gateway_env(kubeconfig, tmp_path / "gw", token),
                             tmp_path / "gateway.log")
    try:
        url = await gateway.start()
        facts = await kernel_session(url, token, "python-cpu")
        await gpu_starts_queue_and_are_let_through(url, token)
        await an_idle_gpu_kernel_is_reclaimed_for_a_waiter(url, token)
        failed = await api(url, "POST", "/api/kernels", {"name": "broken-image"}, token=token)
        assert failed.code >= 400 and "ErrImagePull" in json_of(failed).get("message", ""), \
            failed.body
        await users_secret_is_watched(url, kubectl, alice, bob)
    finally:
        await gateway.stop()
    log = (tmp_path / "gateway.log").read_text()
    assert denials_of(cluster, gateway_user) == [], log[-3000:]
    assert "is forbidden" not in log, log[-3000:]  # no API 403 reached the gateway
    assert facts["first"][0] == "42" and facts["after_restart"] == "False"
    assert facts["kernelspecs"] == ["broken-image", "python-cpu", "python-gpu", RECLAIMABLE]
    gateway_used = requests_by(cluster, gateway_user)
    print("gateway:", fmt(gateway_used), file=sys.stderr)
    gateway_rules = role_rules(DEPLOY / "gateway" / "role.yaml")
    check_grants(gateway_rules, gateway_used, GATEWAY_UNEXERCISED, "gateway")
    # The users Secret was listed and watched by name, under the resourceNames rule.
    assert {("list", "", "secrets", ""), ("watch", "", "secrets", "")} <= set(gateway_used)

    # --- the cull job, from the CronJob's container, on an orphaned kernel ---------------------
    kernel_id = "5b1f0c3e-8a52-4d0e-9d0a-0c1de2a3b4c5"
    record = {"apiVersion": R.API_VERSION, "kind": "JupyterKernel",
              "metadata": {"name": R.kernel_object_name(kernel_id), "namespace": NAMESPACE},
              "spec": {"kernelId": kernel_id, "user": "alice", "kernelSpec": "python-cpu",
                       "gateway": "a-gateway-that-is-gone"}}
    await kubectl.apply_docs([record])
    cull_user = service_account_user(CULL)
    cull_kubeconfig = await service_account_kubeconfig(cluster, kubectl, CULL,
                                                       tmp_path / "cull.kubeconfig")
    cron = container_of(base_docs, "CronJob", CULL)
    argv = host_command(cron, {"POD_NAMESPACE": NAMESPACE},
                        [f"--kubeconfig={cull_kubeconfig}", "--orphan-grace=0"])
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert kernel_id in out.decode() and "rphan" in out.decode(), out.decode()
    gone = await kubectl.run("get", "-n", NAMESPACE, "jupyterkernel",
                             R.kernel_object_name(kernel_id))
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    assert denials_of(cluster, cull_user) == []
    cull_used = requests_by(cluster, cull_user)
    print("cull:", fmt(cull_used), file=sys.stderr)
    check_grants(role_rules(DEPLOY / "cull" / "role.yaml"), cull_used, CULL_UNEXERCISED, "cull")

    # --- the one grant no request uses is still needed: without it no kernel can start --------
    owner = json.loads(await kubectl("create", "-f", "-", "-o", "json", stdin=yaml.safe_dump({
        **record, "metadata": {"name": "owner-check", "namespace": NAMESPACE}})))
    narrowed = copy.deepcopy(find(base_docs, "Role", GATEWAY))
    narrowed["rules"] = [r for r in narrowed["rules"]
                         if r["resources"] != ["jupyterkernels/finalizers"]]
    await kubectl.apply_docs([narrowed])
    home = tmp_path / "gateway-kubectl"
    home.mkdir()
    as_gateway = Kubectl(kubeconfig, home)
    owned = {"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": "kernel-key", "namespace": NAMESPACE, "ownerReferences": [{
                 "apiVersion": R.API_VERSION, "kind": "JupyterKernel",
                 "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                 "controller": True, "blockOwnerDeletion": True}]}}
    refused = await as_gateway.run("create", "-f", "-", stdin=yaml.safe_dump(owned))
    assert refused.returncode != 0
    assert ('secrets "kernel-key" is forbidden: cannot set blockOwnerDeletion if an '
            "ownerReference refers to a resource you can't set finalizers on: , <nil>"
            in refused.stderr), refused.stderr
    # The Roles checked are the ones the install applies.
    assert find(base_docs, "Role", GATEWAY)["rules"] == gateway_rules
