"""Starts that fail while the API server hangs leave no hidden JupyterKernel behind.

A hung API server (SIGSTOP: its port still accepts connections, nothing answers) makes a start
fail with a clear 503 once the gateway's request timeout passes. When the API server resumes it
carries out the create it had queued: a JupyterKernel with no pod appears, which its user cannot
see or delete, no gateway re-attaches, the cull cron's idle rule skips, and which counts against
the user's kernel limit and GPU quota. Now:

* the provisioner removes it by name in the background (only the record this start made, by its
  start id) as soon as it appears;
* a gateway deletes the pod-less records it claims that never started once they are older than
  their kernelspec's ``launchTimeout`` plus ``KernelHydrator.launch_grace``, at startup and when
  they appear later; the cull cron does so for any gateway (``--launch-grace``), with the reason
  in its report, and ``--dry-run`` deletes nothing;
* a kernel waiting in the GPU queue (its pod exists, gated) and a kernel that ran (a restart in
  progress) are never taken.

The hung-server test runs the local cluster as a process (``elastic-kernels cluster``) so it can
be stopped, and a gateway process on it; both are always stopped (the cluster continued first).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from elastic_kernels.culling import policy as C
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import EVENTS, PODS, SECRETS, KubeClient, KubeError
from elastic_kernels.kube.informer import Informer
from elastic_kernels.localcluster.cluster import LocalCluster

from .conftest import CRDS, KERNELSPECS, derived_kernelspec, kube_client
from .gateway.support import json_of
from .gatewayfixtures import ALICE_TOKEN, USERS_DOC
from .gatewayproc import GatewayProcess, Gateways
from .test_cull_cron import parse_table, put_lease, run_cull, wait_until_older_than

pytestmark = pytest.mark.timeout(150)

#: The gateway's timeout for API requests in the hung-server test: how long a start waits.
API_TIMEOUT = 5
#: Seconds past the launch timeout before a pod-less record is judged (gateway and cron).
GRACE = 1
GPU_QUEUE_GATE = f"{R.GROUP}/gpu-queue"

JSONDict = dict[str, Any]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# --- the local cluster as a process, so that it can be stopped ----------------------------------


@dataclass
class ClusterProcess:
    """``elastic-kernels cluster`` in a subprocess; ``pause`` SIGSTOPs it, ``stop`` always ends it
    (continuing it first: a stopped process cannot act on SIGTERM)."""

    proc: asyncio.subprocess.Process
    kubeconfig_path: Path
    log_path: Path
    paused: bool = False

    @classmethod
    async def start(cls, workdir: Path) -> ClusterProcess:
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "cluster.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBECONFIG")}
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "elastic_kernels", "cluster",
                "--kubeconfig", str(workdir / "kubeconfig"), "--workdir", str(workdir / "pods"),
                "--apply", str(CRDS), "--apply", str(KERNELSPECS), "--log-level", "WARNING",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log,
                env=env,
            )
        cluster = cls(proc, workdir / "kubeconfig", log_path)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert b"local cluster: API server http://127.0.0.1:" in line or \
                b"local cluster: API server https://127.0.0.1:" in line, \
                (line, log_path.read_text()[-3000:])
        except BaseException:
            await cluster.stop()
            raise
        return cluster

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused and self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    async def stop(self) -> None:
        self.resume()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest_asyncio.fixture
async def cluster_process(tmp_path: Path) -> AsyncIterator[ClusterProcess]:
    cluster = await ClusterProcess.start(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        await cluster.stop()


@pytest_asyncio.fixture
async def process_kube(cluster_process: ClusterProcess) -> AsyncIterator[KubeClient]:
    async with kube_client(cluster_process.kubeconfig_path) as client:
        yield client


async def call(url: str, method: str, path: str, body: Any = None,
               timeout: float = 90) -> HTTPResponse:
    """One request to the gateway as alice, waiting long enough for a hung start to fail."""
    request = HTTPRequest(
        url.rstrip("/") + path, method=method,
        headers={"Authorization": f"token {ALICE_TOKEN}"},
        body=json.dumps(body) if body is not None else (None if method in ("GET", "DELETE")
                                                        else b""),
        request_timeout=timeout, allow_nonstandard_methods=True,
    )
    return await AsyncHTTPClient().fetch(request, raise_error=False)


async def kernel_objects(kube: KubeClient) -> dict[str, list[str]]:
    """Every kernel's record, pod and key Secret left in the namespace, by kind."""
    found: dict[str, list[str]] = {}
    for kind, resource, selector in (("records", R.JUPYTERKERNELS, None),
                                     ("pods", PODS, R.KERNEL_POD_SELECTOR),
                                     ("secrets", SECRETS, R.KERNEL_SELECTOR)):
        items = (await kube.list(resource, label_selector=selector))["items"]
        found[kind] = [o["metadata"]["name"] for o in items
                       if not o["metadata"].get("deletionTimestamp")]
    return found


async def test_a_start_during_a_hung_api_server_leaves_no_hidden_record(
        cluster_process: ClusterProcess, process_kube: KubeClient, tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    users.write_text(json.dumps(USERS_DOC))
    # Watching from before the hang sees every record the API server creates after it.
    records = Informer(process_kube, R.JUPYTERKERNELS, "default")
    appeared: list[str] = []
    records.add_listener(lambda kind, obj, _: appeared.append(obj["metadata"]["name"])
                         if kind == "ADDED" else None)
    gateway: GatewayProcess | None = None
    try:
        await records.start()
        gateway = await GatewayProcess.start(
            cast(LocalCluster, cluster_process), tmp_path, "hung", "--log-level=INFO",
            f"--users-file={users}", "--KernelOwnership.max_kernels_per_user=1",
            f"--ClusterConnection.request_timeout={API_TIMEOUT}")
        assert await kernel_objects(process_kube) == {"records": [], "pods": [], "secrets": []}

        cluster_process.pause()
        loop = asyncio.get_running_loop()
        asked = loop.time()
        try:
            failed = await call(gateway.url, "POST", "/api/kernels", {"name": "python-cpu"})
        finally:
            cluster_process.resume()
        waited = loop.time() - asked
        print(f"\nstart while the API server hung: {failed.code} after {waited:.1f}s")
        assert failed.code == 503, failed.body
        assert json_of(failed)["reason"] == "ClusterUnavailable", failed.body

        # The API server carries out the create it had queued: the record appears, and goes.
        def settled(_: Any = None) -> bool:
            return bool(appeared) and not records.items()

        try:
            if not settled():
                await records.wait_for(settled, timeout=60)
        except asyncio.TimeoutError:
            if not appeared and not records.items():
                # On a loaded machine the API server may drop the create it had queued (the
                # client was gone before it read the body): nothing to hide, nothing left.
                print("the hung API server never carried the create out; no record exists")
                return
            raise AssertionError(f"JupyterKernels {[name_of(o) for o in records.items()]} still "
                                 "there 60s after the API server resumed") from None
        (ghost,) = appeared
        print(f"leftover {ghost} removed {loop.time() - asked - waited:.1f}s after the API "
              "server resumed")
        await gateway.wait_for_log(rf"removed JupyterKernel default/{ghost} left by a failed "
                                   r"start \(creating its record had an unknown outcome",
                                   timeout=10)
        assert await kernel_objects(process_kube) == {"records": [], "pods": [], "secrets": []}
        with pytest.raises(KubeError) as err:
            await process_kube.get(R.JUPYTERKERNELS, ghost)
        assert err.value.not_found

        # Nothing counts against alice: with a limit of one kernel she starts one.
        listed = await call(gateway.url, "GET", "/api/kernels")
        assert listed.code == 200 and json_of(listed) == [], listed.body
        started = await call(gateway.url, "POST", "/api/kernels", {"name": "python-cpu"})
        assert started.code == 201, started.body
        kernel_id = json_of(started)["id"]
        second = await call(gateway.url, "POST", "/api/kernels", {"name": "python-cpu"})
        assert second.code == 403, second.body  # the limit is really one
        stopped = await call(gateway.url, "DELETE", f"/api/kernels/{kernel_id}")
        assert stopped.code == 204, stopped.body
    finally:
        cluster_process.resume()
        if gateway is not None:
            await gateway.stop()
            (tmp_path / "gateway-hung.log").write_text(gateway.log)
        await records.stop()


# --- the sweep: gateway and cron ------------------------------------------------------------------


async def record(kube: KubeClient, spec: str, gateway: str, *, user: str = "alice",
                 started: bool = False) -> JSONDict:
    """A JupyterKernel as a start writes it before its pod (no status): what a hung API server
    creates after the start failed. ``started`` makes it a kernel that ran (restarting)."""
    kernel_id = str(uuid.uuid4())
    created = await kube.create(R.JUPYTERKERNELS, {
        "apiVersion": R.API_VERSION, "kind": R.KERNEL_KIND,
        "metadata": {"name": R.kernel_object_name(kernel_id),
                     "labels": {R.LABEL_MANAGED_BY: R.MANAGED_BY,
                                R.LABEL_COMPONENT: R.COMPONENT_KERNEL,
                                R.LABEL_KERNEL_ID: kernel_id}},
        "spec": {"kernelId": kernel_id, "user": user, "kernelSpec": spec, "gateway": gateway},
    })
    if started:
        return await kube.patch(R.JUPYTERKERNELS, created["metadata"]["name"], {"status": {
            "phase": R.PHASE_STARTING, "reason": "Restarting", "restartCount": 1,
            "startedAt": created["metadata"]["creationTimestamp"]}}, subresource="status")
    return created


async def gated_pod(kube: KubeClient, owner: JSONDict) -> JSONDict:
    """The pod of a kernel waiting in the GPU queue: created, held by the queue's gate."""
    kernel_id = owner["spec"]["kernelId"]
    return await kube.create(PODS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": R.kernel_pod_name(kernel_id),
            "labels": {R.LABEL_MANAGED_BY: R.MANAGED_BY, R.LABEL_COMPONENT: R.COMPONENT_KERNEL,
                       R.LABEL_KERNEL_ID: kernel_id},
            "ownerReferences": [{"apiVersion": R.API_VERSION, "kind": R.KERNEL_KIND,
                                 "name": owner["metadata"]["name"],
                                 "uid": owner["metadata"]["uid"], "controller": True}],
        },
        "spec": {"schedulingGates": [{"name": GPU_QUEUE_GATE}],
                 "containers": [{"name": R.CONTAINER_NAME, "image": "python:3",
                                 "command": ["python", "-c", "pass"],
                                 "resources": {"limits": {R.GPU_RESOURCE: 1}}}]},
    })


def name_of(obj: JSONDict) -> str:
    return str(obj["metadata"]["name"])


async def names(kube: KubeClient) -> set[str]:
    return {name_of(o) for o in (await kube.list(R.JUPYTERKERNELS))["items"]
            if not o["metadata"].get("deletionTimestamp")}


async def test_cron_and_gateway_delete_podless_records_past_their_launch_timeout(
        cluster: LocalCluster, kube: KubeClient, gateways: Gateways) -> None:
    await kube.create(R.KERNELSPECS, derived_kernelspec("python-cpu", "quick",
                                                        launchTimeout="2s"))
    await kube.create(R.KERNELSPECS, derived_kernelspec("python-gpu", "quick-gpu",
                                                        launchTimeout="2s"))
    await put_lease(kube, "gw-live", utcnow(), duration=3600)

    # Claimed by a live gateway: only the cron takes its leftovers.
    ghost = await record(kube, "quick", "gw-live")
    queued = await record(kube, "quick-gpu", "gw-live")
    await gated_pod(kube, queued)
    restarting = await record(kube, "quick", "gw-live", started=True)
    young = await record(kube, "python-cpu", "gw-live")  # the default launch timeout: 5m
    await wait_until_older_than(ghost, 2 + GRACE)
    await wait_until_older_than(restarting, 2 + GRACE)
    before = await names(kube)

    code, out, err = await run_cull("--dry-run", "--launch-grace", str(GRACE), "-o", "json",
                                    kubeconfig=cluster.kubeconfig_path)
    assert code == 0, err
    (would,) = json.loads(out)
    assert (would["name"], would["reason"], would["action"]) == \
        (name_of(ghost), "LaunchAbandoned", "would delete"), would
    assert "no pod" in would["message"] and "launchTimeout of 2s" in would["message"], would
    assert await names(kube) == before  # a dry run deletes nothing

    code, out, err = await run_cull("--launch-grace", str(GRACE),
                                    kubeconfig=cluster.kubeconfig_path)
    assert code == 0, err
    rows = parse_table(out)
    assert [(r["KERNEL"], r["REASON"], r["ACTION"]) for r in rows] == \
        [(ghost["spec"]["kernelId"], "LaunchAbandoned", "deleted")], out
    assert await names(kube) == before - {name_of(ghost)}
    assert await kube.get(PODS, R.kernel_pod_name(queued["spec"]["kernelId"]))
    events = (await kube.list(EVENTS))["items"]
    assert any(e["involvedObject"]["name"] == name_of(ghost) and e["reason"] == "LaunchAbandoned"
               for e in events), events

    # Claimed by a gateway: at its start it deletes its own leftovers, and later ones as they
    # come of age; its queued kernel, its restarting one and other gateways' stay.
    me = "test-gateway-sweeper"
    mine = await record(kube, "quick", me)
    mine_queued = await record(kube, "quick-gpu", me)
    await gated_pod(kube, mine_queued)
    mine_restarting = await record(kube, "quick", me, started=True)
    await wait_until_older_than(mine, 2 + GRACE)
    gateway = await gateways.start("sweeper", f"--KernelHydrator.launch_grace={GRACE}")
    await gateway.wait_for_log(rf"Deleted JupyterKernel {name_of(mine)} .*LaunchAbandoned: "
                               r"the kernel never started and has no pod", timeout=30)
    later = await record(kube, "quick", me)  # as a hung API server creates it, after the start
    await gateway.wait_for_log(rf"Deleted JupyterKernel {name_of(later)} .*LaunchAbandoned",
                               timeout=30)
    remaining = await names(kube)
    assert name_of(mine) not in remaining and name_of(later) not in remaining
    assert {name_of(mine_queued), name_of(mine_restarting), name_of(queued),
            name_of(restarting), name_of(young)} <= remaining
    assert await kube.get(PODS, R.kernel_pod_name(mine_queued["spec"]["kernelId"]))
    assert name_of(mine_queued) not in gateway.log and name_of(young) not in gateway.log


# --- the rule itself ------------------------------------------------------------------------------


NOW = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)


def test_only_a_podless_record_that_never_started_past_its_launch_timeout_is_abandoned() -> None:
    leftover = C.KernelFacts(name="kernel-x", namespace="default", kernel_id="x", user="alice",
                             kernel_spec="quick", created_at=NOW - timedelta(seconds=400),
                             has_pod=False)

    def judged(facts: C.KernelFacts, timeout: float = 300, grace: float = 60) -> str | None:
        return C.launch_abandoned_message(facts, timeout, NOW, grace)

    assert judged(leftover) is not None
    assert judged(replace(leftover, phase=R.PHASE_STARTING)) is not None
    assert judged(leftover, timeout=350) is None  # 400s old, within 350s + 60s grace
    assert judged(replace(leftover, has_pod=True)) is None  # e.g. gated in the GPU queue
    assert judged(replace(leftover, has_pod=None)) is None  # nobody looked for its pod
    assert judged(replace(leftover, started_at=NOW - timedelta(seconds=399))) is None
    assert judged(replace(leftover, phase=R.PHASE_RUNNING)) is None
    assert judged(replace(leftover, deleting=True)) is None
    assert judged(leftover, timeout=0) is None

    policy = C.Policy(launch_timeout=300)
    decision = C.decide(leftover, policy, NOW, launch_grace=60)
    assert decision is not None and decision.reason is C.CullReason.LAUNCH_ABANDONED
    assert C.decide(leftover, C.Policy(), NOW, launch_grace=60) is None
    # What a gateway's culler knows about the kernels it holds never includes pods.
    assert C.decide(replace(leftover, has_pod=None), policy, NOW) is None


def test_only_outcomes_that_may_have_happened_count_as_unknown() -> None:
    assert KubeError(0, "Unreachable", "read timed out", sent=True).outcome_unknown
    assert KubeError(0, "Unreachable", "?").outcome_unknown  # nobody could tell: assume so
    assert not KubeError(0, "Unreachable", "refused", sent=False).outcome_unknown
    for status in (500, 503, 504):
        assert KubeError(status, "", "").outcome_unknown
    for status in (400, 403, 409, 422, 429):
        assert not KubeError(status, "", "").outcome_unknown
