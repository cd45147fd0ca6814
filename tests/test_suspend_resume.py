"""Suspend instead of delete: a reclaimed kernel keeps the user's work and comes back with it.

One node with one simulated GPU. Alice's kernel, of a kernelspec with ``onCull: Suspend``,
defines variables (numbers, a list, a class and a function of the notebook, an instance, a
generator) and goes idle; Bob's start waits for the GPU, so Alice's kernel is reclaimed: its
namespace is saved (signed by the gateway), its pod and GPU go to Bob, and its record stays,
Suspended. Alice's open websocket then sends three requests: the first resumes her kernel in a
new pod (Bob's idle kernel is reclaimed in turn, and suspended too), all three get their
replies, the first cell shows what was restored and what not (the generator), and the variables
work. Snapshots that were modified, or that belong to another user's kernel, are refused with
that message and nothing of them reaches the kernel. Restart and shutdown of a suspended kernel
do what a user expects: a fresh kernel, and the kernel gone, each without its snapshot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from tornado.httpclient import HTTPClientError

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.gateway.lifecycle.kernelmanager import ElasticMappingKernelManager
from elastic_kernels.gateway.lifecycle.suspension import KEY_ENV
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import EVENTS, PODS, KubeClient
from elastic_kernels.localcluster.cluster import LocalCluster

from .conftest import GatewayFactory, derived_kernelspec, running_cluster
from .gateway.support import KernelWS, api, json_of
from .gatewayproc import Gateways, eventually, wait_until

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

SPEC = "gpu-suspend"
NOTEBOOK = (
    "x = 41\n"
    "items = [1, 2, 3]\n"
    "class Box:\n"
    "    def __init__(self, v):\n"
    "        self.v = v\n"
    "def inc(n):\n"
    "    return n + 1\n"
    "b = Box(inc(x))\n"
    "gen = (i for i in items)\n"
)


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """One node with one simulated GPU: a second GPU kernel must wait, or reclaim."""
    async with running_cluster(tmp_path, nodes=1, gpus_per_node=1) as c:
        yield c


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "snapshots"


@pytest.fixture
def start_gateway(make_cluster_gateway: GatewayFactory, store: Path,
                  monkeypatch: pytest.MonkeyPatch) -> GatewayFactory:
    monkeypatch.setenv(KEY_ENV, "s" * 48)

    async def start(*extra: str) -> ElasticGatewayApp:
        return await make_cluster_gateway(
            "--CullingDefaults.interval=0.3",
            f"--ElasticMappingKernelManager.snapshot_store={store}", *extra)

    return start


def suspend_spec() -> dict[str, Any]:
    doc = derived_kernelspec("python-gpu", SPEC, launchTimeout="120s")
    doc["spec"]["culling"] = {"idleTimeout": "0", "maxAge": "0", "reclaimAfter": "1s",
                              "onCull": "Suspend",
                              "suspend": {"maxBytes": 8 * 1024 * 1024, "timeout": "30s"}}
    return doc


async def apply_spec(kube: KubeClient, km: ElasticMappingKernelManager) -> None:
    await kube.create(R.KERNELSPECS, suspend_spec())
    specs = km._kernelspecs
    assert specs is not None
    await specs.wait_for(lambda o: o is not None, SPEC, timeout=10)


def phase(km: ElasticMappingKernelManager, kernel_id: str) -> str:
    record = km.kernel_record(kernel_id) or {}
    return str((record.get("status") or {}).get("phase") or "")


async def kernel_pods(kube: KubeClient, kernel_id: str) -> list[dict[str, Any]]:
    pods = (await kube.list(PODS, label_selector=R.KERNEL_POD_SELECTOR))["items"]
    return [p for p in pods
            if (p["metadata"].get("labels") or {}).get(R.LABEL_KERNEL_ID) == kernel_id
            and not p["metadata"].get("deletionTimestamp")]


async def start_and_define(gw: ElasticGatewayApp, km: ElasticMappingKernelManager,
                           user: str) -> tuple[str, KernelWS]:
    kernel_id = await km.start_kernel(kernel_name=SPEC, user=user)
    ws = await KernelWS.open(gw.url, kernel_id)
    result = await ws.execute(NOTEBOOK, timeout=60)
    assert result["reply"] is not None and result["reply"]["status"] == "ok", result
    return kernel_id, ws


async def alice_reclaimed_for_bob(start_gateway: GatewayFactory, kube: KubeClient
                                  ) -> tuple[ElasticGatewayApp, ElasticMappingKernelManager,
                                             str, str]:
    """A gateway; Alice's kernel with the notebook's variables, idle; Bob's start, which
    reclaims the GPU from it (so Alice's is suspended, or about to be)."""
    gw = await start_gateway()
    km: ElasticMappingKernelManager = gw.kernel_manager
    await apply_spec(kube, km)
    alice, alice_ws = await start_and_define(gw, km, "alice")
    alice_ws.close()
    bob = await asyncio.wait_for(km.start_kernel(kernel_name=SPEC, user="bob"), 120)
    return gw, km, alice, bob


async def test_a_reclaimed_kernel_is_suspended_and_resumes_with_its_variables(
        start_gateway: GatewayFactory, kube: KubeClient, store: Path) -> None:
    gw = await start_gateway()
    km: ElasticMappingKernelManager = gw.kernel_manager
    await apply_spec(kube, km)
    alice, alice_ws = await start_and_define(gw, km, "alice")
    try:
        # Bob's start needs the one GPU: Alice's idle kernel is reclaimed, by suspending it.
        bob = await asyncio.wait_for(km.start_kernel(kernel_name=SPEC, user="bob"), 120)
        assert phase(km, alice) == R.PHASE_SUSPENDED
        assert not await kernel_pods(kube, alice), "the suspended kernel's pod is gone"
        assert await kernel_pods(kube, bob), "Bob's kernel got the GPU"
        model = json_of(await api(gw.url, "GET", f"/api/kernels/{alice}"))
        assert model["execution_state"] == "suspended"
        record = await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(alice))
        assert record["status"]["gpus"] == 0
        assert "saved" in record["status"]["message"] and "gen (" in record["status"]["message"]
        assert (store / f"{alice}.eksnap").exists()
        events = (await kube.list(EVENTS))["items"]
        assert any(e["reason"] == "Suspended" and e["involvedObject"]["name"]
                   == R.kernel_object_name(alice) for e in events)

        # Alice comes back: three requests on her open websocket, sent before any reply.
        ids = [alice_ws.send("execute_request", {"code": code, "silent": False})
               for code in ("print(x, items)", "print(b.v, inc(1), Box(2).v)",
                            "print(sum(1 for _ in range(3)))")]
        replies: dict[str, dict[str, Any]] = {}
        output: dict[str, str] = {i: "" for i in ids}
        errors: dict[str, str] = {i: "" for i in ids}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 150
        # Until each has its reply (shell) and its idle status (iopub, after its output: the
        # two channels are not ordered with each other).
        idle: set[str] = set()
        while len(replies) < len(ids) or len(idle) < len(ids):
            msg = await alice_ws.recv(max(0.1, deadline - loop.time()))
            assert msg is not None, "websocket closed during the resume"
            parent = (msg.get("parent_header") or {}).get("msg_id")
            if parent not in output:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle.add(parent)
            if msg["msg_type"] == "execute_reply":
                replies[parent] = msg["content"]
            elif msg["msg_type"] == "stream":
                target = output if msg["content"]["name"] == "stdout" else errors
                target[parent] += msg["content"]["text"]
        assert all(r["status"] == "ok" for r in replies.values()), replies
        assert output[ids[0]] == "41 [1, 2, 3]\n"
        assert output[ids[1]] == "42 2 2\n"
        assert output[ids[2]] == "3\n"
        notice = errors[ids[0]]
        assert "Resumed after suspension" in notice and "not restored: gen" in notice, notice
        assert "generator" in notice
        assert phase(km, alice) == R.PHASE_RUNNING
        # Bob's idle kernel gave the GPU back the same way, and the snapshot of Alice's is gone.
        assert phase(km, bob) == R.PHASE_SUSPENDED
        assert not (store / f"{alice}.eksnap").exists()
    finally:
        alice_ws.close()


async def test_a_modified_or_foreign_snapshot_is_refused(
        start_gateway: GatewayFactory, kube: KubeClient, store: Path) -> None:
    gw, km, alice, bob = await alice_reclaimed_for_bob(start_gateway, kube)
    bob_ws = await KernelWS.open(gw.url, bob)
    assert (await bob_ws.execute("bobs_secret = 'plans'"))["reply"]["status"] == "ok"
    bob_ws.close()
    await wait_until(lambda: phase(km, alice) == R.PHASE_SUSPENDED, "alice suspended")

    # Alice's snapshot is replaced by one sealed for Bob's kernel: never restored into hers.
    carol = asyncio.ensure_future(km.start_kernel(kernel_name=SPEC, user="carol"))
    try:
        await wait_until(lambda: phase(km, bob) == R.PHASE_SUSPENDED, "bob suspended")
        (store / f"{alice}.eksnap").write_bytes((store / f"{bob}.eksnap").read_bytes())
        carol_id = await asyncio.wait_for(carol, 120)
    finally:
        if not carol.done():
            carol.cancel()
    ws = await KernelWS.open(gw.url, alice)  # a connect resumes (Carol's kernel is reclaimed)
    try:
        result = await ws.execute("print('bobs_secret' in globals(), 'x' in globals())",
                                  timeout=120)
        assert result["stdout"] == "False False\n"
        assert result["errors"] == [] and result["reply"]["status"] == "ok"
    finally:
        ws.close()
    assert phase(km, carol_id) == R.PHASE_SUSPENDED

    # Bob's own snapshot, one byte changed, is refused as modified.
    data = bytearray((store / f"{bob}.eksnap").read_bytes())
    data[-5] ^= 1
    (store / f"{bob}.eksnap").write_bytes(bytes(data))
    ws = await KernelWS.open(gw.url, bob)
    try:
        msg_id = ws.send("execute_request", {"code": "print('bobs_secret' in globals())",
                                             "silent": False})
        notice = await ws.wait_for(
            lambda m: m["msg_type"] == "stream" and m["content"]["name"] == "stderr"
            and m["parent_header"].get("msg_id") == msg_id, timeout=120)
        assert "refused" in notice["content"]["text"]
        assert "modified or not signed by this gateway" in notice["content"]["text"]
        reply = await ws.wait_reply(msg_id, "execute_reply", timeout=60)
        assert reply["content"]["status"] == "ok"
    finally:
        ws.close()


async def test_restart_and_shutdown_of_a_suspended_kernel(
        start_gateway: GatewayFactory, kube: KubeClient, store: Path) -> None:
    gw, km, alice, bob = await alice_reclaimed_for_bob(start_gateway, kube)
    await wait_until(lambda: phase(km, alice) == R.PHASE_SUSPENDED, "alice suspended")
    await km.shutdown_kernel(bob, now=True)  # frees the GPU for the restart below

    # Restart: a fresh kernel, its snapshot dropped.
    restarted = await api(gw.url, "POST", f"/api/kernels/{alice}/restart")
    assert restarted.code == 200, restarted.body
    assert not (store / f"{alice}.eksnap").exists()
    ws = await KernelWS.open(gw.url, alice)
    try:
        assert (await ws.execute("print('x' in globals())", timeout=60))["stdout"] == "False\n"
        assert (await ws.execute("y = 1"))["reply"]["status"] == "ok"
    finally:
        ws.close()

    # Suspended again by the next start that needs the GPU; then shut down for good.
    carol = await asyncio.wait_for(km.start_kernel(kernel_name=SPEC, user="carol"), 120)
    await wait_until(lambda: phase(km, alice) == R.PHASE_SUSPENDED, "alice suspended again")
    assert (store / f"{alice}.eksnap").exists()
    deleted = await api(gw.url, "DELETE", f"/api/kernels/{alice}")
    assert deleted.code == 204, deleted.body
    assert alice not in km
    assert not (store / f"{alice}.eksnap").exists()
    await wait_until(lambda: km.kernel_record(alice) is None, "alice's record deleted")
    assert carol in km


async def test_a_failed_restore_keeps_the_snapshot_and_tries_again(
        start_gateway: GatewayFactory, kube: KubeClient, store: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A restore the store (or the kernel) fails, not one refused, loses nothing: the connect
    is told why, the kernel is suspended again with its snapshot kept and its new pod gone,
    and the next connect restores it."""
    gw, km, alice, bob = await alice_reclaimed_for_bob(start_gateway, kube)
    await wait_until(lambda: phase(km, alice) == R.PHASE_SUSPENDED, "alice suspended")
    await km.shutdown_kernel(bob, now=True)  # the GPU is free: the resume gets a pod
    snapshots = km.snapshots
    assert snapshots is not None

    def outage(kernel_id: str) -> None:
        raise OSError("the store is unreachable")

    with monkeypatch.context() as during:
        during.setattr(snapshots.store, "open_read", outage)
        with pytest.raises(HTTPClientError) as refused:
            await KernelWS.open(gw.url, alice, timeout=120)
    assert refused.value.code == 503
    assert (store / f"{alice}.eksnap").exists()
    assert phase(km, alice) == R.PHASE_SUSPENDED and km.is_suspended(alice)
    record = km.kernel_record(alice) or {}
    assert "restoring its variables failed: cannot read the snapshot store: the store is " \
           "unreachable; they are kept" in record["status"]["message"]
    assert await kernel_pods(kube, alice) == []  # the GPU is not held meanwhile

    ws = await KernelWS.open(gw.url, alice, timeout=120)
    try:
        result = await ws.execute("print(x, b.v, inc(1))", timeout=120)
        assert result["stdout"] == "41 42 2\n", result
    finally:
        ws.close()
    assert not (store / f"{alice}.eksnap").exists()


async def test_another_gateway_resumes_a_suspended_kernel(
        gateways: Gateways, kube: KubeClient, store: Path, tmp_path: Path) -> None:
    """A suspended kernel needs no gateway to hold it: a second replica (or the next gateway
    after a restart) lists it, answers for it and resumes it from the shared store. The
    replicas are processes, as in a Deployment."""
    key = tmp_path / "snapshot-key"
    key.write_text("k" * 64)
    args = ("--CullingDefaults.interval=0.3",
            f"--ElasticMappingKernelManager.snapshot_store={store}",
            f"--ElasticMappingKernelManager.snapshot_key_file={key}")
    await kube.create(R.KERNELSPECS, suspend_spec())
    a = await gateways.start("a", *args)
    alice = await a.start_kernel(SPEC)
    assert (await a.execute(alice, NOTEBOOK))["reply"]["status"] == "ok"
    bob = await a.start_kernel(SPEC)  # reclaims Alice's GPU: she is suspended
    await eventually(lambda: record_phase(kube, alice, R.PHASE_SUSPENDED))

    b = await gateways.start("b", *args)
    listed = json_of(await api(b.url, "GET", "/api/kernels"))
    assert {k["id"]: k["execution_state"] for k in listed}.get(alice) == "suspended"
    model = json_of(await api(b.url, "GET", f"/api/kernels/{alice}"))
    assert model["execution_state"] == "suspended"

    ws = await KernelWS.open(b.url, alice)  # resumes at B (A reclaims Bob's idle kernel)
    try:
        result = await ws.execute("print(x, b.v, inc(1))", timeout=120)
        assert result["stdout"] == "41 42 2\n", result
    finally:
        ws.close()
    assert await record_phase(kube, alice, R.PHASE_RUNNING)
    assert not (store / f"{alice}.eksnap").exists()
    await eventually(lambda: record_phase(kube, bob, R.PHASE_SUSPENDED))


async def record_phase(kube: KubeClient, kernel_id: str, wanted: str) -> bool:
    record = await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id))
    return (record.get("status") or {}).get("phase") == wanted
