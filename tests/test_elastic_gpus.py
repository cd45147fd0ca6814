"""Elastic GPUs in the gateway: per-kernelspec culling, the fair GPU queue, reclaim and quotas.

A gateway runs in-process against a local cluster with few simulated GPUs. Users are passed to
the kernel manager as the gateway's handlers do after authentication (the token → user mapping
has its own tests). Culling intervals and timeouts are short; nothing sleeps for minutes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.gateway.lifecycle.kernelmanager import ElasticMappingKernelManager
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import EVENTS, KubeClient, KubeError
from elastic_kernels.localcluster.cluster import LocalCluster
from elastic_kernels.provisioner import KernelLaunchError

from .conftest import GatewayFactory, derived_kernelspec, running_cluster
from .gateway.promtext import scrape
from .gateway.support import KernelWS, api, json_of
from .gatewayproc import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """One node with two simulated GPUs."""
    async with running_cluster(tmp_path, nodes=1, crash_backoff_seconds=None) as c:
        yield c


@pytest.fixture
def start_gateway(make_cluster_gateway: GatewayFactory) -> GatewayFactory:
    """Start a gateway (extra argv appended) that culls every 0.3 s."""
    async def start(*extra: str) -> ElasticGatewayApp:
        return await make_cluster_gateway("--CullingDefaults.interval=0.3", *extra)

    return start


async def apply(kube: KubeClient, km: ElasticMappingKernelManager, doc: dict[str, Any]) -> None:
    await kube.create(R.KERNELSPECS, doc)
    specs = km._kernelspecs
    assert specs is not None
    await specs.wait_for(lambda o: o is not None, doc["metadata"]["name"], timeout=10)


def gpu_spec(name: str, **culling: str) -> dict[str, Any]:
    doc = derived_kernelspec("python-gpu", name, launchTimeout="90s")
    doc["spec"]["culling"] = {"idleTimeout": "0", "reclaimAfter": "0", "maxAge": "0", **culling}
    return doc


async def record_message(kube: KubeClient, kernel_id: str) -> str:
    record = await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id))
    return str((record.get("status") or {}).get("message") or "")


async def test_per_kernelspec_idle_timeouts(start_gateway: GatewayFactory,
                                            kube: KubeClient) -> None:
    gw = await start_gateway()
    km: ElasticMappingKernelManager = gw.kernel_manager
    await apply(kube, km, gpu_spec("gpu-brief", idleTimeout="2s"))
    cpu = derived_kernelspec("python-cpu", "cpu-patient")
    cpu["spec"]["culling"] = {"idleTimeout": "1h"}
    await apply(kube, km, cpu)

    gpu_id = await km.start_kernel(kernel_name="gpu-brief", user="alice")
    cpu_id = await km.start_kernel(kernel_name="cpu-patient", user="alice")
    await wait_until(lambda: gpu_id not in km, timeout=60)
    # The user learns why from the 404 that follows (open websockets get it as close reason).
    gone = await api(gw.url, "GET", f"/api/kernels/{gpu_id}")
    assert gone.code == 404
    assert json_of(gone)["reason"] == "IdleTimeout"
    assert "idleTimeout of 2s" in json_of(gone)["message"]
    assert cpu_id in km
    events = (await kube.list(EVENTS))["items"]
    assert any(e["reason"] == "IdleTimeout"
               and e["involvedObject"]["name"] == R.kernel_object_name(gpu_id) for e in events)
    with pytest.raises(KubeError):
        await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(gpu_id))


async def test_gpu_quota_refuses_at_once(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway("--ElasticMappingKernelManager.gpu_quota_per_user=1")
    km: ElasticMappingKernelManager = gw.kernel_manager
    await km.start_kernel(kernel_name="python-gpu", user="alice")
    with pytest.raises(KernelLaunchError) as err:
        await km.start_kernel(kernel_name="python-gpu", user="alice")
    assert err.value.status_code == 403
    assert "may use 1 nvidia.com/gpu and already uses or waits for 1" in err.value.message
    # Another user, and CPU kernels, are not affected.
    await km.start_kernel(kernel_name="python-gpu", user="bob")
    await km.start_kernel(kernel_name="python-cpu", user="alice")


async def test_waiting_kernel_is_served_by_reclaiming_an_idle_one(
        start_gateway: GatewayFactory, kube: KubeClient) -> None:
    gw = await start_gateway()
    km: ElasticMappingKernelManager = gw.kernel_manager
    await apply(kube, km, gpu_spec("gpu-shared", reclaimAfter="1s"))

    idle_id = await km.start_kernel(kernel_name="gpu-shared", user="alice")
    busy_id = await km.start_kernel(kernel_name="gpu-shared", user="bob")
    busy_ws = await KernelWS.open(gw.url, busy_id)
    idle_ws = await KernelWS.open(gw.url, idle_id)
    try:
        await busy_ws.start_busy("import time; time.sleep(120)")

        carol = asyncio.ensure_future(km.start_kernel(kernel_name="gpu-shared", user="carol"))
        try:
            await wait_until(lambda: bool(km.gpu_queue.snapshot()), timeout=30)
            waiting = km.gpu_queue.snapshot()[0]
            assert waiting["user"] == "carol" and waiting["position"] == 1
            status = json_of(await api(gw.url, "GET", "/api/elastic/status"))
            assert [w["user"] for w in status["gpu_queue"]] == ["carol"]
            queued = await scrape(gw.url)
            assert queued.value("elastic_kernels_gpu_queue_length") == 1
            assert queued.value("elastic_kernels_gpus_held") == 2

            carol_id = await asyncio.wait_for(carol, 90)
        finally:
            if not carol.done():
                carol.cancel()
        # The idle kernel went to carol; the busy one was never touched.
        assert carol_id in km and busy_id in km and idle_id not in km
        assert await idle_ws.recv_until_closed(30) == 4000
        assert "ReclaimedForWaitingKernel" in (idle_ws.ws.close_reason or "")
        gone = json_of(await api(gw.url, "GET", f"/api/kernels/{idle_id}"))
        assert gone["reason"] == "ReclaimedForWaitingKernel"
        assert "another kernel waited" in gone["message"]
        model = json_of(await api(gw.url, "GET", f"/api/kernels/{carol_id}"))
        assert model["elastic"]["phase"] == "Running"
        metrics = await scrape(gw.url)
        assert metrics.value("elastic_kernels_gpu_queue_length") == 0
        assert metrics.value("elastic_kernels_gpu_queue_wait_seconds_count") == 1
        assert metrics.value("elastic_kernels_culls_total",
                             reason="ReclaimedForWaitingKernel") == 1
        assert metrics.value("elastic_kernels_kernels_by_phase", phase="Running") == 2
    finally:
        busy_ws.close()
        idle_ws.close()


async def test_queue_is_fair_across_users(start_gateway: GatewayFactory, kube: KubeClient) -> None:
    gw = await start_gateway()
    km: ElasticMappingKernelManager = gw.kernel_manager
    await apply(kube, km, gpu_spec("gpu-fair"))  # reclaim off: only shutdowns free GPUs
    holders = [await km.start_kernel(kernel_name="gpu-fair", user="holder") for _ in range(2)]

    starts: dict[str, asyncio.Future[str]] = {}
    try:
        for i in range(5):
            starts[f"a{i}"] = asyncio.ensure_future(
                km.start_kernel(kernel_name="gpu-fair", user="alice"))
            await wait_until(lambda n=i + 1: len(km.gpu_queue.snapshot()) == n, timeout=30)
        starts["b0"] = asyncio.ensure_future(km.start_kernel(kernel_name="gpu-fair", user="bob"))
        await wait_until(lambda: len(km.gpu_queue.snapshot()) == 6, timeout=30)

        order = [w["user"] for w in km.gpu_queue.snapshot()]
        assert order == ["alice", "bob", "alice", "alice", "alice", "alice"]
        bob_entry = next(w for w in km.gpu_queue.snapshot() if w["user"] == "bob")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while "2nd in queue" not in await record_message(kube, bob_entry["kernel_id"]):
            assert loop.time() < deadline, "bob's record never showed its position"
            await asyncio.sleep(0.05)

        # Free one GPU: alice's first start runs. Free the next: bob's, not alice's second.
        await km.shutdown_kernel(holders[0])
        first = await asyncio.wait_for(starts["a0"], 60)
        assert first in km
        await km.shutdown_kernel(holders[1])
        second = await asyncio.wait_for(starts["b0"], 60)
        assert second in km
        assert not starts["a1"].done()
    finally:
        for fut in starts.values():
            if not fut.done():
                fut.cancel()
        await asyncio.gather(*starts.values(), return_exceptions=True)
