"""The install runs as pods on a cluster that enforces what kube-apiserver enforces, under its
own ServiceAccounts and Roles, and uses all that they grant.

The local cluster enforces authentication, RBAC, OwnerReferencesPermissionEnforcement and Pod
Security Admission as kube-apiserver does, and the install's namespace is labelled
``pod-security.kubernetes.io/enforce: restricted`` (``deploy/namespace.yaml``). On it run, each
made from the shipped pod template and created with kubectl:

- the gateway, as its Deployment's ReplicaSet would create it. It configures itself in-cluster,
  from the ServiceAccount token, CA and ``KUBERNETES_SERVICE_HOST`` the kubelet gives it, over
  HTTPS; its shared token comes from the Secret. One change: ``--ip=0.0.0.0`` (every interface
  of the pod's own network namespace) becomes ``--ip=$(POD_IP)``, the pod's private 127.x
  address, because the local cluster's pods are processes on this host.
  Its snapshot store is the ``elastic-kernels-snapshots`` claim (a local-path volume here) and
  its snapshot key the Secret ``elastic-kernels-snapshot-key``, mounted as a file, created with
  the admin guide's command.
- the notebook server (JupyterLab), from its Deployment, with the same ``--ip`` change and one
  more, for what the local cluster does not have: no Service proxy or cluster DNS, so
  ``--gateway-url`` names the gateway pod's IP instead of the ``elastic-kernels-gateway``
  Service. (And ``--allow-root`` when this host runs the test as root: the kubelet here does
  not switch to the pod's ``runAsUser``.) A whole kernel session -- kernelspecs,
  start, execute, interrupt, restart, execute, shut down -- goes through it over HTTP and the
  websocket, as a browser's would, and it relays to the gateway pod.
- the cull job, made as an admin makes one to cull now: ``kubectl create job
  --from=cronjob/elastic-kernels-cull``. The local cluster has no Job controller, so the test
  creates the Job's pod from the Job's template as the controller would, and reads its exit and
  its log. One change: ``--orphan-grace=0`` instead of five minutes, so the orphan it must
  delete need not be five minutes old. It mounts the snapshot store too, and deletes the
  orphan's snapshot with it.

Against the gateway pod: GPU starts that queue on the node's one GPU, the second gated behind
the first and each let through in order as the GPU frees; an idle GPU kernel of a kernelspec
with ``onCull: Suspend``, started through the notebook server, reclaimed for another user's
waiting start -- suspended: its variables saved, its pod gone, its record Suspended -- then
resumed by a websocket connect through the notebook server, its variables back; a start that
fails (its image cannot be pulled); per-user tokens from the users Secret, watched by name;
and a gateway restart -- its pod deleted and a new one made from the same template -- after
which a kernel started before is still running and usable through the new pod, and shows its
events and pod log to its owner. Then the cull job pod deletes an orphaned kernel and its
snapshot.

While it serves, the gateway pod keeps the image pre-pull DaemonSets: made at its start from
the installed kernelspecs, patched when a kernelspec with a new image comes and goes, created
for a template that places kernels elsewhere and deleted with its last kernelspec.

Not one request of these pods was refused, and every grant of the two Roles is used, except the
few listed below with the reason they are needed although these scenarios do not exercise them.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import secrets
import sys
import typing as t
from pathlib import Path

import pytest
import yaml
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from elastic_kernels.kube import resources as R
from elastic_kernels.localcluster.cluster import LocalCluster
from elastic_kernels.kube.client import DAEMONSETS
from elastic_kernels.kube.informer import Informer
from elastic_kernels.provisioner import prepull
from tests.conftest import derived_kernelspec, kube_client
from tests.gateway.support import KernelWS, api, json_of

from .conftest import Kubectl
from .manifests import DEPLOY, JSON, KERNELSPECS, NAMESPACE, find, load_docs
from .rbac import Grant, fmt, grants
from .session import (
    Pods,
    denials_of,
    kernel_session,
    local_pod,
    new_token,
    replica_name,
    requests_by,
    service_account_kubeconfig,
    service_account_user,
    template_pod,
    wait_serving,
)

pytestmark = [pytest.mark.kubectl, pytest.mark.slow, pytest.mark.timeout(300)]

GROUP = R.GROUP
LEASES = "coordination.k8s.io"
GATEWAY = "elastic-kernels-gateway"
CULL = "elastic-kernels-cull"
USERS_SECRET = "elastic-kernels-users"
NOTEBOOK = "elastic-kernels-notebook"
GATEWAY_TOKEN = "elastic-kernels-gateway-token"
NOTEBOOK_TOKEN = "elastic-kernels-notebook-token"
SNAPSHOT_KEY = "elastic-kernels-snapshot-key"
SNAPSHOTS_CLAIM = "elastic-kernels-snapshots"
GATEWAY_SERVICE_URL = "http://elastic-kernels-gateway:8888"

#: Granted and needed, but possibly not exercised by the session in this test -- with the reason.
#: (Code that starts using one of them needs no change here; a grant outside these lists that
#: the session does not use fails the test, and so does any request the cluster refused.)
GATEWAY_UNEXERCISED: dict[Grant, str] = {
    ("get", "", "pods", ""): "hydrating a kernel whose pod the shared pod watch has not "
                             "delivered yet reads it by name (gateway/lifecycle/hydration.py)",
    # Never requested: the API server asks it on the gateway's behalf when the gateway creates a
    # kernel's Pod and Secret (blockOwnerDeletion); the test shows the create fails without it.
    ("update", GROUP, "jupyterkernels", "finalizers"): "OwnerReferencesPermissionEnforcement",
    ("patch", GROUP, "jupyterkernelspecs", "status"): "a warm pool's status (spec.warmPool); "
                                                      "the scenario's kernelspecs have no pool",
    ("get", "apps", "daemonsets", ""): "a pre-pull DaemonSet's create that finds it made already "
                                      "(another replica, or its watch behind) reads it by name "
                                      "to check it is ours (provisioner/prepull.py)",
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


async def kernel_record(kubectl: Kubectl, kernel_id: str) -> JSON:
    return t.cast(JSON, await kubectl.json("get", "-n", NAMESPACE, "jupyterkernel",
                                           R.kernel_object_name(kernel_id)))


async def an_idle_gpu_kernel_is_suspended_for_a_waiter_and_resumed(
        lab_url: str, lab_token: str, url: str, token: str, alice: str,
        kubectl: Kubectl) -> None:
    """The node's one GPU is held by an idle kernel past its spec's reclaimAfter, started
    through the notebook server; alice's GPU start waits, and the gateway reclaims the idle one
    for her -- its spec says onCull Suspend, so it saves the kernel's variables, lets the pod
    go (status patch, pod delete, Event, as its Role allows) and keeps the kernel. A websocket
    connect through the notebook server resumes it in a new pod, the variable restored."""
    started = await api(lab_url, "POST", "/api/kernels", {"name": RECLAIMABLE}, token=lab_token)
    assert started.code == 201, started.body
    idle = json_of(started)["id"]
    await execute(lab_url, lab_token, idle, "kept = 6 * 7")
    old_pod = json_of(await api(url, "GET", f"/api/kernels/{idle}", token=token))[
        "elastic"]["pod"]
    assert old_pod
    waiter = await asyncio.wait_for(start_kernel(url, alice, RECLAIMABLE), 90)
    model = await api(url, "GET", f"/api/kernels/{idle}", token=token)
    assert model.code == 200 and json_of(model)["execution_state"] == "suspended", model.body
    status = (await kernel_record(kubectl, idle))["status"]
    assert status["phase"] == "Suspended" and status["gpus"] == 0, status
    assert "saved 1 variable (kept)" in status["message"], status
    gone = await kubectl.run("get", "-n", NAMESPACE, "pod", old_pod)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone
    await shut_down(url, alice, waiter)

    notices: list[str] = []
    ws = await KernelWS.open(lab_url, idle, token=lab_token)
    try:
        result = await ws.execute("print(kept)", timeout=90, on_output=lambda m: notices.append(
            str((m.get("content") or {}).get("text", ""))))
    finally:
        ws.close()
    assert result["reply"] is not None and result["reply"]["status"] == "ok", result
    assert result["stdout"].strip() == "42"
    assert any("Resumed after suspension" in n and "kept" in n for n in notices), notices
    status = (await kernel_record(kubectl, idle))["status"]
    assert status["phase"] == "Running", status
    new_pod = json_of(await api(url, "GET", f"/api/kernels/{idle}", token=token))[
        "elastic"]["pod"]
    assert new_pod and new_pod != old_pod
    # The new kernel pod has no part of the key: neither its Secret nor a variable naming it.
    pod = await kubectl.json("get", "-n", NAMESPACE, "pod", new_pod)
    assert SNAPSHOT_KEY not in json.dumps(pod["spec"]), pod["spec"]
    await shut_down(lab_url, lab_token, idle)


async def prepull_follows_kernelspecs(cluster: LocalCluster, kubectl: Kubectl) -> None:
    """The gateway pod creates, patches and deletes the pre-pull DaemonSets as kernelspecs
    come and go (the admin's client only watches them)."""
    async with kube_client(cluster.kubeconfig_path) as client:
        informer = Informer(client, DAEMONSETS, NAMESPACE,
                            label_selector=prepull.PREPULL_SELECTOR)
        changed = asyncio.Event()
        informer.add_listener(lambda *_: changed.set())
        await informer.start()

        def images() -> set[str]:
            return {image for ds in informer.items() for image in ds["metadata"][
                "annotations"][prepull.ANNOTATION_IMAGES].split(",")}

        async def until(check: t.Callable[[set[str]], bool]) -> None:
            async with asyncio.timeout(60):
                while not check(images()):
                    changed.clear()
                    await changed.wait()

        try:
            await until(lambda i: "ghcr.io/elastic-kernels/kernel-python:0.1.0" in i)
            await kubectl.apply_docs([derived_kernelspec(
                "python-cpu", "prepull-new", image="registry.example/prepull-new:1")],
                "-n", NAMESPACE)
            await until(lambda i: "registry.example/prepull-new:1" in i)  # patched
            elsewhere = {"apiVersion": R.API_VERSION, "kind": R.TEMPLATE_KIND,
                         "metadata": {"name": "prepull-elsewhere"},
                         "spec": {"pod": {"nodeSelector": {"example.com/pool": "other"}}}}
            await kubectl.apply_docs([elsewhere, derived_kernelspec(
                "python-cpu", "prepull-elsewhere", image="registry.example/elsewhere:1",
                templateRef={"name": "prepull-elsewhere"})], "-n", NAMESPACE)
            await until(lambda i: "registry.example/elsewhere:1" in i)  # created
            await kubectl("delete", "-n", NAMESPACE, "jupyterkernelspec", "prepull-new",
                          "prepull-elsewhere")
            await kubectl("delete", "-n", NAMESPACE, "jupyterkerneltemplate",
                          "prepull-elsewhere")
            # Patched back, and the other placement's DaemonSet deleted.
            await until(lambda i: not i & {"registry.example/prepull-new:1",
                                           "registry.example/elsewhere:1"})
        finally:
            await informer.stop()


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


def gateway_pod(docs: list[JSON]) -> JSON:
    """A gateway pod as its Deployment's ReplicaSet creates one (a new name each time)."""
    return local_pod(find(docs, "Deployment", GATEWAY), replica_name(GATEWAY), NAMESPACE)


def notebook_pod(docs: list[JSON], gateway_url: str) -> JSON:
    """The notebook server's pod as its Deployment's ReplicaSet creates it, with the changes the
    module docstring lists: the gateway pod's URL for the Service's (and ``--allow-root`` if
    this host is root)."""
    pod = local_pod(find(docs, "Deployment", NOTEBOOK), replica_name(NOTEBOOK), NAMESPACE)
    (container,) = pod["spec"]["containers"]
    assert f"--gateway-url={GATEWAY_SERVICE_URL}" in container["args"]
    container["args"] = [f"--gateway-url={gateway_url}" if a.startswith("--gateway-url=") else a
                         for a in container["args"]]
    if os.geteuid() == 0:
        container["args"].append("--allow-root")
    return pod


def job_pod(job: JSON) -> JSON:
    """The pod the Job controller creates for ``job`` (its template, the labels the API server
    gives a Job's pods, the Job as controlling owner), with ``--orphan-grace=0``."""
    meta = job["metadata"]
    name, uid = meta["name"], meta["uid"]
    pod = template_pod(job["spec"]["template"], f"{name}-{replica_name('x')[-5:]}", NAMESPACE,
                       {"batch.kubernetes.io/job-name": name, "job-name": name,
                        "batch.kubernetes.io/controller-uid": uid, "controller-uid": uid})
    pod["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job",
                                           "name": name, "uid": uid, "controller": True,
                                           "blockOwnerDeletion": True}]
    (container,) = pod["spec"]["containers"]
    assert "--orphan-grace=5m" in container["args"]
    container["args"] = ["--orphan-grace=0" if a.startswith("--orphan-grace=") else a
                         for a in container["args"]]
    return pod


async def serving(pods: Pods, pod: JSON) -> tuple[str, JSON]:
    """Run ``pod``; its URL (port 8888 on its own IP) once it answers, and the pod."""
    running = await pods.running(pod)
    ip = running["status"]["podIP"]
    assert ip.startswith("127.") and ip != "127.0.0.1", ip
    url = f"http://{ip}:8888"
    await wait_serving(url)
    return url, running


async def execute(url: str, token: str, kernel_id: str, code: str) -> str:
    ws = await KernelWS.open(url, kernel_id, token=token)
    try:
        result = await ws.execute(code, timeout=60)
    finally:
        ws.close()
    assert result["reply"]["status"] == "ok", result
    return t.cast(str, result["stdout"])


async def a_session_through_the_notebook_server(lab_url: str, lab_token: str, gateway_url: str,
                                                gateway_token: str) -> dict[str, t.Any]:
    """The representative session, as a browser drives it through JupyterLab; while the kernel
    runs the gateway holds it (the notebook server only relays)."""
    denied = await api(lab_url, "GET", "/api/kernels", token=None)
    assert denied.code in (401, 403)
    facts = await kernel_session(lab_url, lab_token, "python-cpu")
    started = await api(lab_url, "POST", "/api/kernels", {"name": "python-cpu"}, token=lab_token)
    assert started.code == 201, started.body
    kernel_id = json_of(started)["id"]
    assert (await execute(lab_url, lab_token, kernel_id, "print(6 * 7)")).strip() == "42"
    held = await api(gateway_url, "GET", f"/api/kernels/{kernel_id}", token=gateway_token)
    assert held.code == 200 and json_of(held)["elastic"]["pod"], held.body
    await shut_down(lab_url, lab_token, kernel_id)
    gone = await api(gateway_url, "GET", f"/api/kernels/{kernel_id}", token=gateway_token)
    assert gone.code == 404, gone.body
    return facts


async def a_kernel_outlives_its_gateway_pod(pods: Pods, docs: list[JSON], old: JSON,
                                            url: str, token: str) -> tuple[str, str]:
    """A kernel started through one gateway pod keeps running when that pod is deleted, and a
    new pod from the same template serves it, state and all. The new pod's name and URL."""
    kernel_id = await start_kernel(url, token, "python-cpu")
    await execute(url, token, kernel_id, "survivor = 6 * 7")
    await pods.delete(old["metadata"]["name"])
    new_url, new = await serving(pods, gateway_pod(docs))
    assert new_url != url
    model = await api(new_url, "GET", f"/api/kernels/{kernel_id}", token=token)
    assert model.code == 200, model.body
    assert (await execute(new_url, token, kernel_id, "print(survivor)")).strip() == "42"
    # Its events (list events) and its pod's log (get pods/log), as its owner asks for them
    # when a start fails (the JupyterLab extension's "Show details").
    found = await api(new_url, "GET", f"/api/elastic/kernels/{kernel_id}/diagnostics",
                      token=token)
    assert found.code == 200, found.body
    (log,) = json_of(found)["logs"]
    assert log["error"] is None and log["lines"], log
    assert any(e["reason"] == "Scheduled" for e in json_of(found)["events"]), found.body
    await shut_down(new_url, token, kernel_id)
    return new["metadata"]["name"], new_url


async def snapshots_directory(kubectl: Kubectl) -> Path:
    """Where the snapshots claim's local-path volume is on this host."""
    claim = await kubectl.json("get", "-n", NAMESPACE, "pvc", SNAPSHOTS_CLAIM)
    volume = await kubectl.json("get", "pv", claim["spec"]["volumeName"])
    return Path(volume["spec"]["hostPath"]["path"])


async def the_cull_job_deletes_an_orphan(pods: Pods, docs: list[JSON], kubectl: Kubectl) -> None:
    """A kernel record whose gateway is gone (no Lease, never adopted) is deleted by the cull
    job's pod, which succeeds and says why in its log; the kernel's snapshot in the gateway's
    store goes with it."""
    kernel_id = "5b1f0c3e-8a52-4d0e-9d0a-0c1de2a3b4c5"
    snapshot = await snapshots_directory(kubectl) / f"{kernel_id}.eksnap"
    snapshot.write_bytes(b"a suspended kernel's snapshot")
    record = {"apiVersion": R.API_VERSION, "kind": "JupyterKernel",
              "metadata": {"name": R.kernel_object_name(kernel_id), "namespace": NAMESPACE},
              "spec": {"kernelId": kernel_id, "user": "alice", "kernelSpec": "python-cpu",
                       "gateway": "a-gateway-that-is-gone"}}
    await kubectl.apply_docs([record])
    # What the admin runs to cull now. (kubectl sends a Job as protobuf, which the local API
    # server does not decode for Jobs; the same object, rendered by kubectl, goes in as JSON.)
    rendered = await kubectl("create", "job", "-n", NAMESPACE, f"--from=cronjob/{CULL}",
                             "cull-now", "--dry-run=client", "-o", "json")
    job = json.loads(await kubectl("create", "-f", "-", "-o", "json", stdin=rendered))
    assert job["metadata"]["annotations"] == {"cronjob.kubernetes.io/instantiate": "manual"}
    assert job["spec"]["template"] == find(docs, "CronJob", CULL)["spec"]["jobTemplate"][
        "spec"]["template"]
    pod = await pods.completed(job_pod(job))
    name = pod["metadata"]["name"]
    logs = await pods.logs(name)
    (status,) = pod["status"]["containerStatuses"]
    assert pod["status"]["phase"] == "Succeeded", (status, logs)
    assert status["state"]["terminated"]["exitCode"] == 0
    assert kernel_id in logs and "rphan" in logs, logs
    gone = await kubectl.run("get", "-n", NAMESPACE, "jupyterkernel",
                             R.kernel_object_name(kernel_id))
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    assert not snapshot.exists(), "the cull job deleted the orphan's snapshot"
    await pods.delete(name)


async def test_the_install_runs_as_pods_under_its_roles_and_uses_all_they_grant(
        install_cluster: LocalCluster, kubectl: Kubectl, base_docs: list[JSON],
        tmp_path: Path) -> None:
    cluster = install_cluster
    await kubectl.apply_docs(base_docs)
    namespace = await kubectl.json("get", "namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    await kubectl("apply", "-n", NAMESPACE, "-k", str(KERNELSPECS))
    # A GPU kernelspec whose idle kernels may be reclaimed for a waiting start after 1 s.
    reclaimable = derived_kernelspec("python-gpu", RECLAIMABLE, launchTimeout="90s")
    # It suspends them instead of deleting them.
    reclaimable["spec"]["culling"] = {"reclaimAfter": "1s", "onCull": "Suspend",
                                      "suspend": {"maxBytes": 8 << 20, "timeout": "30s"}}
    await kubectl.apply_docs([reclaimable], "-n", NAMESPACE)
    # A kernelspec whose image cannot be pulled: the failure path writes status and an Event.
    await kubectl.apply_docs([derived_kernelspec("python-cpu", "broken-image",
                                                 image="registry.example/does-not-exist:1")],
                             "-n", NAMESPACE)
    alice, bob = new_token(), new_token()
    await kubectl.apply_docs([users_secret(alice=alice)])
    # The two tokens the admin guide has the admin create before the first apply.
    token, lab_token = new_token(), new_token()
    for secret, value in ((GATEWAY_TOKEN, token), (NOTEBOOK_TOKEN, lab_token)):
        await kubectl("create", "secret", "generic", "-n", NAMESPACE, secret,
                      f"--from-literal=token={value}")
    # And the snapshot key, as the admin guide has it created (`openssl rand -hex 32`).
    snapshot_key = secrets.token_hex(32)
    await kubectl("create", "secret", "generic", "-n", NAMESPACE, SNAPSHOT_KEY,
                  f"--from-literal=key={snapshot_key}")
    gateway_user = service_account_user(GATEWAY)
    cull_user = service_account_user(CULL)
    container = find(base_docs, "Deployment", GATEWAY)["spec"]["template"]["spec"][
        "containers"][0]
    assert f"--users-secret={USERS_SECRET}" in container["args"]

    pods = Pods(kubectl)
    logs: list[str] = []
    try:
        url, gateway = await serving(pods, gateway_pod(base_docs))
        # In-cluster configuration: no kubeconfig, the HTTPS service address the kubelet gave
        # the pod, trusted through the mounted ca.crt.
        assert not any(e["name"] == "KUBECONFIG" for c in gateway["spec"]["containers"]
                       for e in c.get("env", []))
        assert install_cluster.kubelet is not None and install_cluster.apiserver is not None
        service = install_cluster.kubelet.service_env
        assert f"https://{service['KUBERNETES_SERVICE_HOST']}:" \
               f"{service['KUBERNETES_SERVICE_PORT']}" == install_cluster.apiserver.tls_url

        lab_url, notebook = await serving(pods, notebook_pod(base_docs, url))
        facts = await a_session_through_the_notebook_server(lab_url, lab_token, url, token)
        await gpu_starts_queue_and_are_let_through(url, token)
        await an_idle_gpu_kernel_is_suspended_for_a_waiter_and_resumed(
            lab_url, lab_token, url, token, alice, kubectl)
        failed = await api(url, "POST", "/api/kernels", {"name": "broken-image"}, token=token)
        assert failed.code >= 400 and "ErrImagePull" in json_of(failed).get("message", ""), \
            failed.body
        await users_secret_is_watched(url, kubectl, alice, bob)
        await prepull_follows_kernelspecs(cluster, kubectl)
        logs.append(await pods.logs(notebook["metadata"]["name"]))
        await pods.delete(notebook["metadata"]["name"])

        logs.append(await pods.logs(gateway["metadata"]["name"]))
        assert f"serving {url}/" in logs[-1]
        name, url = await a_kernel_outlives_its_gateway_pod(pods, base_docs, gateway, url, token)
        logs.append(await pods.logs(name))
        await pods.delete(name)

        await the_cull_job_deletes_an_orphan(pods, base_docs, kubectl)
    except BaseException:
        await pods.show_logs()
        raise
    finally:
        await pods.delete_all()
    for log in logs:
        assert token not in log and lab_token not in log and snapshot_key not in log
        assert "is forbidden" not in log, log[-3000:]  # no API 403 reached a pod
    assert facts["first"][0] == "42" and facts["after_restart"] == "False"
    assert facts["kernelspecs"] == ["broken-image", "python-cpu", "python-gpu", RECLAIMABLE]

    # --- who asked for what: the pods, as their ServiceAccounts, by their mounted tokens -------
    users = cluster.request_counter.users()
    assert gateway_user in users and cull_user in users
    # The notebook server has no token mounted and no business with the API.
    assert requests_by(cluster, service_account_user(NOTEBOOK)) == {}
    assert denials_of(cluster, gateway_user) == []
    assert denials_of(cluster, cull_user) == []
    gateway_used = requests_by(cluster, gateway_user)
    print("gateway:", fmt(gateway_used), file=sys.stderr)
    gateway_rules = role_rules(DEPLOY / "gateway" / "role.yaml")
    check_grants(gateway_rules, gateway_used, GATEWAY_UNEXERCISED, "gateway")
    # The users Secret was listed and watched by name, under the resourceNames rule.
    assert {("list", "", "secrets", ""), ("watch", "", "secrets", "")} <= set(gateway_used)
    cull_used = requests_by(cluster, cull_user)
    print("cull:", fmt(cull_used), file=sys.stderr)
    check_grants(role_rules(DEPLOY / "cull" / "role.yaml"), cull_used, CULL_UNEXERCISED, "cull")
    # The Roles checked are the ones the install applies.
    assert find(base_docs, "Role", GATEWAY)["rules"] == gateway_rules

    # --- the one grant no request uses is still needed: without it no kernel can start --------
    kubeconfig = await service_account_kubeconfig(cluster, kubectl, GATEWAY,
                                                  tmp_path / "gateway.kubeconfig")
    owner = json.loads(await kubectl("create", "-f", "-", "-o", "json", stdin=yaml.safe_dump({
        "apiVersion": R.API_VERSION, "kind": "JupyterKernel",
        "metadata": {"name": "owner-check", "namespace": NAMESPACE},
        "spec": {"kernelId": "0d3c6b1e-2f4a-4c8e-9b7d-1a2b3c4d5e6f", "user": "alice",
                 "kernelSpec": "python-cpu"}})))
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
