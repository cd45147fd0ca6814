"""GPU flavors on the local cluster (issue 16): MIG kernels queue, are reclaimed for and count
against quotas apart from whole GPUs, and the autoscaler mode leaves N waiters ungated.

One node with a whole GPU and one with two MIG 1g.10gb partitions; a gateway runs in-process
with a culling pass every 0.3 s, as in ``test_elastic_gpus.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from elastic_kernels.gateway.lifecycle.kernelmanager import ElasticMappingKernelManager
from elastic_kernels.kube.client import PODS, KubeClient
from elastic_kernels.localcluster.cluster import LocalCluster
from elastic_kernels.localcluster.nodes import NodeConfig
from elastic_kernels.provisioner import KernelLaunchError

from .conftest import GatewayFactory, running_cluster
from .gateway.support import KernelWS, api, json_of
from .gatewayproc import wait_until
from .test_elastic_gpus import apply, gpu_spec, record_message

pytestmark = pytest.mark.timeout(120)

MIG = "nvidia.com/mig-1g.10gb"
WHOLE = "nvidia.com/gpu"


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """A node with one whole GPU and a node with two MIG partitions."""
    nodes = [NodeConfig(name="whole", gpus=1), NodeConfig(name="mig", gpu_flavors={MIG: 2})]
    async with running_cluster(tmp_path, node_configs=nodes, crash_backoff_seconds=None) as c:
        yield c


@pytest.fixture
def start_gateway(make_cluster_gateway: GatewayFactory) -> GatewayFactory:
    async def start(*extra: str) -> Any:
        return await make_cluster_gateway("--CullingDefaults.interval=0.3", *extra)

    return start


def mig_spec(name: str, **culling: str) -> dict[str, Any]:
    doc = gpu_spec(name, **culling)
    limits = doc["spec"]["resources"]["limits"]
    del limits[WHOLE]
    limits[MIG] = 1
    return doc


async def pod_of(kube: KubeClient, km: ElasticMappingKernelManager, kernel_id: str
                 ) -> dict[str, Any]:
    record = km.kernel_record(kernel_id) or {}
    name = (record.get("status") or {}).get("podName") or f"kernel-{kernel_id}"
    return await kube.get(PODS, name)


async def test_a_mig_kernel_waits_for_mig_capacity_only(start_gateway: GatewayFactory,
                                                        kube: KubeClient) -> None:
    gw = await start_gateway()
    km: ElasticMappingKernelManager = gw.kernel_manager
    await apply(kube, km, mig_spec("mig"))
    await apply(kube, km, gpu_spec("whole"))

    first = await km.start_kernel(kernel_name="mig", user="alice")
    await km.start_kernel(kernel_name="mig", user="bob")
    pod = await pod_of(kube, km, first)
    assert pod["spec"]["nodeName"] == "mig"
    assert pod["spec"]["containers"][0]["resources"]["limits"][MIG] == "1"
    assert WHOLE not in pod["spec"]["containers"][0]["resources"]["limits"]
    record = km.kernel_record(first) or {}
    assert record["status"]["gpuResource"] == MIG
    ws = await KernelWS.open(gw.url, first)
    try:
        run = await ws.execute("import os; print(os.environ['CUDA_VISIBLE_DEVICES'])")
        assert run["stdout"].startswith("MIG-"), run
    finally:
        ws.close()

    # Both partitions are taken; the whole GPU is free, and the third MIG kernel waits anyway.
    waiting = asyncio.ensure_future(km.start_kernel(kernel_name="mig", user="carol"))
    try:
        await wait_until(lambda: bool(km.gpu_queue.snapshot()), timeout=30)
        entry = km.gpu_queue.snapshot()[0]
        assert (entry["user"], entry["resource"], entry["position"]) == ("carol", MIG, 1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while f"waiting for 1 {MIG}: 1st in queue" not in await record_message(
                kube, entry["kernel_id"]):
            assert loop.time() < deadline, "the record never said what it waits for"
            await asyncio.sleep(0.05)
        assert not (await pod_of(kube, km, entry["kernel_id"]))["spec"].get("nodeName")
        model = json_of(await api(gw.url, "GET", f"/api/kernels/{entry['kernel_id']}"))
        assert model["elastic"]["message"] == f"waiting for 1 {MIG}: 1st in queue"

        # A whole-GPU start is not queued behind the MIG waiter, and does not serve it.
        whole = await asyncio.wait_for(km.start_kernel(kernel_name="whole", user="dave"), 60)
        assert (await pod_of(kube, km, whole))["spec"]["nodeName"] == "whole"
        assert not waiting.done()

        await km.shutdown_kernel(first)
        served = await asyncio.wait_for(waiting, 60)
    finally:
        if not waiting.done():
            waiting.cancel()
    assert (await pod_of(kube, km, served))["spec"]["nodeName"] == "mig"


async def test_reclaim_frees_a_kernel_of_the_waiters_flavor(start_gateway: GatewayFactory,
                                                             kube: KubeClient) -> None:
    gw = await start_gateway()
    km: ElasticMappingKernelManager = gw.kernel_manager
    await apply(kube, km, mig_spec("mig", reclaimAfter="1s"))
    await apply(kube, km, gpu_spec("whole", reclaimAfter="1s"))

    # The idle whole-GPU kernel is idle longest, so it would be reclaimed first by idleness.
    idle_whole = await km.start_kernel(kernel_name="whole", user="alice")
    idle_mig = await km.start_kernel(kernel_name="mig", user="bob")
    busy_mig = await km.start_kernel(kernel_name="mig", user="erin")
    sockets = [await KernelWS.open(gw.url, k) for k in (idle_whole, idle_mig, busy_mig)]
    try:
        await sockets[2].start_busy("import time; time.sleep(120)")
        carol = await asyncio.wait_for(km.start_kernel(kernel_name="mig", user="carol"), 90)
        assert idle_mig not in km and busy_mig in km and idle_whole in km
        gone = json_of(await api(gw.url, "GET", f"/api/kernels/{idle_mig}"))
        assert gone["reason"] == "ReclaimedForWaitingKernel"
        assert (await pod_of(kube, km, carol))["spec"]["nodeName"] == "mig"
    finally:
        for ws in sockets:
            ws.close()


async def test_quotas_are_per_user_and_flavor(start_gateway: GatewayFactory,
                                              kube: KubeClient) -> None:
    gw = await start_gateway("--ElasticMappingKernelManager.gpu_quota_per_user=1",
                             "--ElasticMappingKernelManager.gpu_quota_per_flavor="
                             "nvidia.com/mig-*=2")
    km: ElasticMappingKernelManager = gw.kernel_manager
    assert km.gpu_quota(MIG) == 2 and km.gpu_quota(WHOLE) == 1
    await apply(kube, km, mig_spec("mig"))
    await apply(kube, km, gpu_spec("whole"))

    await km.start_kernel(kernel_name="whole", user="alice")
    with pytest.raises(KernelLaunchError) as err:
        await km.start_kernel(kernel_name="whole", user="alice")
    assert err.value.status_code == 403
    assert f"may use 1 {WHOLE} and already uses or waits for 1" in err.value.message
    # Her whole GPU does not count against her MIG quota, nor one MIG kernel against the other.
    await km.start_kernel(kernel_name="mig", user="alice")
    await km.start_kernel(kernel_name="mig", user="alice")
    with pytest.raises(KernelLaunchError) as err:
        await km.start_kernel(kernel_name="mig", user="alice")
    assert f"may use 2 {MIG} and already uses or waits for 2" in err.value.message


async def test_autoscaler_mode_ungates_n_waiters_and_the_head_goes_first(
        start_gateway: GatewayFactory, kube: KubeClient) -> None:
    gw = await start_gateway("--ElasticMappingKernelManager.gpu_queue_ungated=2")
    km: ElasticMappingKernelManager = gw.kernel_manager
    await apply(kube, km, gpu_spec("whole"))  # reclaim off: only a shutdown frees the GPU
    holder = await km.start_kernel(kernel_name="whole", user="holder")

    starts: dict[str, asyncio.Future[str]] = {}
    try:
        # (Arriving in their fair order: a waiter once ungated stays so, and a newcomer that
        # sorts ahead of it widens the window; see queueorder.heads.)
        for n, (key, user) in enumerate((("a0", "alice"), ("b0", "bob"), ("a1", "alice")), 1):
            starts[key] = asyncio.ensure_future(km.start_kernel(kernel_name="whole", user=user))
            await wait_until(lambda n=n: len(km.gpu_queue.snapshot()) == n, timeout=30)
        # The first two are ungated, so an autoscaler would see them; the third is not.
        await wait_until(lambda: [(w["user"], w["gated"]) for w in km.gpu_queue.snapshot()]
                         == [("alice", False), ("bob", False), ("alice", True)],
                         lambda: f"window {km.gpu_queue.snapshot()}", timeout=30)
        ids = {w["user"] + str(i): w["kernel_id"]
               for i, w in enumerate(km.gpu_queue.snapshot())}

        async def gated(kernel_id: str) -> bool:
            return bool((await pod_of(kube, km, kernel_id))["spec"].get("schedulingGates"))

        assert [await gated(k) for k in ids.values()] == [False, False, True]

        # One GPU frees: the head gets it, the second of the window still waits, and the
        # window moves on to the third.
        await km.shutdown_kernel(holder)
        first = await asyncio.wait_for(starts["a0"], 60)
        assert first == ids["alice0"]
        assert not starts["b0"].done()
        await wait_until(lambda: [(w["user"], w["gated"]) for w in km.gpu_queue.snapshot()]
                         == [("bob", False), ("alice", False)], timeout=30)
        await km.shutdown_kernel(first)
        assert await asyncio.wait_for(starts["b0"], 60) == ids["bob1"]
        assert not starts["a1"].done()
    finally:
        for fut in starts.values():
            if not fut.done():
                fut.cancel()
        await asyncio.gather(*starts.values(), return_exceptions=True)


async def test_a_pool_fills_while_only_another_flavor_waits(start_gateway: GatewayFactory,
                                                             kube: KubeClient) -> None:
    """A GPU pool stays empty while starts wait for its flavor (its pods would take capacity
    they need), but a start waiting for whole GPUs does not stop a MIG pool from filling."""
    from .test_warm_pool import wait_ready

    gw = await start_gateway()
    km: ElasticMappingKernelManager = gw.kernel_manager
    await apply(kube, km, gpu_spec("whole"))
    await km.start_kernel(kernel_name="whole", user="alice")  # the only whole GPU
    waiting = asyncio.ensure_future(km.start_kernel(kernel_name="whole", user="bob"))
    try:
        await wait_until(lambda: bool(km.gpu_queue.snapshot()), timeout=30)
        pooled = mig_spec("mig-pooled")
        pooled["spec"]["warmPool"] = {"size": 1}
        await apply(kube, km, pooled)
        await wait_ready("mig-pooled", 1)
        assert not waiting.done(), "bob still waits for a whole GPU"
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
