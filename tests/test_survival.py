"""Kernels outlive their gateway: SIGTERM or SIGKILL it, start another, nothing is lost.

Twenty kernels run in pods of the local cluster, each holding a variable set through the
websocket. The gateway process is stopped with SIGTERM (it leaves the kernels running), a new
gateway process starts and re-attaches all of them from the cluster alone (JupyterKernel, pod,
Secret): they are listed, their variables are intact, and a client reconnecting its websocket
carries on. Then the same after SIGKILL, when the gateway had no chance to say goodbye.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import PODS, KubeClient
from elastic_kernels.localcluster.cluster import LocalCluster

from .gatewayproc import GatewayProcess, Gateways

pytestmark = pytest.mark.timeout(150)

KERNELS = 20
LEASE_SECONDS = 3


@pytest.fixture
def gateway_process_args() -> tuple[str, ...]:
    # A short lease, so a successor claims a dead gateway's kernels within seconds.
    return (f"--ElasticMappingKernelManager.lease_duration={LEASE_SECONDS}",)


async def check_variables(gateway: GatewayProcess, values: dict[str, int]) -> None:
    """Each kernel still has its variable (a new websocket per kernel, as a reconnecting
    client opens one)."""
    async def check(kernel_id: str, value: int) -> None:
        result = await gateway.execute(kernel_id, "print(survivor)")
        assert result["reply"]["status"] == "ok", (kernel_id, result)
        assert result["stdout"] == f"{value}\n", (kernel_id, result)

    await asyncio.gather(*(check(k, v) for k, v in values.items()))


async def claimed_by(kube: KubeClient, ids: list[str], gateway_id: str) -> None:
    """Wait (bounded) until every kernel's record names ``gateway_id`` as its gateway."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10 * LEASE_SECONDS
    while True:
        listed = await kube.list(R.JUPYTERKERNELS)
        holders = {o["spec"]["kernelId"]: o["spec"].get("gateway") for o in listed["items"]}
        if all(holders.get(k) == gateway_id for k in ids):
            return
        assert loop.time() < deadline, f"not all claimed by {gateway_id}: {holders}"
        await asyncio.sleep(0.2)


async def test_kernels_survive_sigterm_and_sigkill_of_their_gateway(
        cluster: LocalCluster, kube: KubeClient, gateways: Gateways) -> None:
    first = await gateways.start("first")
    ids = await asyncio.gather(*(first.start_kernel("python-cpu") for _ in range(KERNELS)))
    assert len(set(ids)) == KERNELS
    values = {kernel_id: 1000 + n for n, kernel_id in enumerate(ids)}

    async def set_variable(kernel_id: str, value: int) -> None:
        result = await first.execute(kernel_id, f"survivor = {value}")
        assert result["reply"]["status"] == "ok", result

    await asyncio.gather(*(set_variable(k, v) for k, v in values.items()))
    pods_before = {k: R.kernel_pod_name(k) for k in ids}

    # SIGTERM: the gateway stops cleanly and leaves every kernel running.
    assert await first.kill(signal.SIGTERM) == 0, first.log[-4000:]
    assert f"Leaving {KERNELS} kernels running" in first.log
    for kernel_id, pod_name in pods_before.items():
        pod = await kube.get(PODS, pod_name)
        assert pod["status"]["phase"] == "Running", (kernel_id, pod["status"])

    second = await gateways.start("second")
    attached = second.ready
    assert attached is not None, second.log[-4000:]
    assert attached.groups() == (str(KERNELS), str(KERNELS)), second.log[-4000:]
    assert await second.kernel_ids() == set(ids)
    await check_variables(second, values)
    # Once the first gateway's lease has run out, the second claims every kernel, so the cull
    # job sees a live gateway for each.
    await claimed_by(kube, ids, "test-gateway-second")

    # SIGKILL: no clean-up at all. The next gateway finds the same kernels, still intact.
    assert await second.kill(signal.SIGKILL) == -signal.SIGKILL
    third = await gateways.start("third")
    attached = third.ready
    assert attached is not None, third.log[-4000:]
    assert attached.groups() == (str(KERNELS), str(KERNELS)), third.log[-4000:]
    assert await third.kernel_ids() == set(ids)
    await check_variables(third, values)
    await claimed_by(kube, ids, "test-gateway-third")

    # Nothing was started twice: still one pod per kernel, the original one.
    pods = await kube.list(PODS, label_selector=R.KERNEL_POD_SELECTOR)
    names = sorted(p["metadata"]["name"] for p in pods["items"])
    assert names == sorted(pods_before.values())


async def test_shutdown_kernels_on_exit_stops_them_with_the_gateway(
        kube: KubeClient, gateways: Gateways) -> None:
    gateway = await gateways.start(
        "tidy", "--ElasticMappingKernelManager.shutdown_kernels_on_exit=True")
    ids = await asyncio.gather(*(gateway.start_kernel("python-cpu") for _ in range(2)))
    assert await gateway.kill(signal.SIGTERM) == 0, gateway.log[-4000:]
    assert (await kube.list(R.JUPYTERKERNELS))["items"] == []
    pods = await kube.list(PODS, label_selector=R.KERNEL_POD_SELECTOR)
    # Garbage collection removes the pods with their records (they may still be terminating).
    assert all(p["metadata"].get("deletionTimestamp") for p in pods["items"]), pods["items"]
    assert {p["metadata"]["labels"][R.LABEL_KERNEL_ID] for p in pods["items"]} <= set(ids)
