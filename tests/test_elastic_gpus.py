"""Elastic GPUs in the gateway: per-kernelspec culling, the fair GPU queue, reclaim and quotas.

A gateway runs in-process against a local cluster with few simulated GPUs. Users are passed to
the kernel manager as the gateway's handlers do after authentication (the token → user mapping
has its own tests). Culling intervals and timeouts are short; nothing sleeps for minutes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_asyncio

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.gateway.kernelmanager import ElasticMappingKernelManager
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import EVENTS, KubeClient, KubeError
from elastic_kernels.kube.config import load_cluster_config
from elastic_kernels.localcluster.cluster import LocalCluster
from elastic_kernels.provisioner import KernelLaunchError

from .conftest import CRDS, KERNELSPECS, derived_kernelspec
from .gateway.support import TOKEN, KernelWS, api, json_of

pytestmark = pytest.mark.timeout(120)


@pytest_asyncio.fixture
async def small_cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """One node with two simulated GPUs."""
    c = LocalCluster(nodes=1, gpus_per_node=2, workdir=tmp_path / "cluster",
                     manifests=[CRDS, KERNELSPECS])
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@pytest_asyncio.fixture
async def kube(small_cluster: LocalCluster) -> AsyncIterator[KubeClient]:
    cfg = load_cluster_config(small_cluster.kubeconfig_path)
    client = KubeClient(cfg.api_client, cfg.namespace)
    try:
        yield client
    finally:
        await client.close()


async def start_gateway(cluster: LocalCluster, home: Path, *extra: str) -> ElasticGatewayApp:
    for name in ("config", "data", "runtime", "root"):
        (home / name).mkdir(parents=True, exist_ok=True)
    app = ElasticGatewayApp()
    app.initialize(argv=[
        "--ip=127.0.0.1", "--port=0", f"--token={TOKEN}",
        f"--kubeconfig={cluster.kubeconfig_path}",
        f"--ServerApp.root_dir={home / 'root'}",
        "--ElasticGatewayApp.install_signal_handlers=False",
        "--ElasticMappingKernelManager.shutdown_kernels_on_exit=True",
        "--CullingDefaults.interval=0.3",
        *extra,
    ])
    await app.start_serving()
    return app


@pytest.fixture
def jupyter_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "jupyter"
    for name, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                      ("JUPYTER_RUNTIME_DIR", "runtime")):
        monkeypatch.setenv(name, str(home / sub))
    monkeypatch.setenv("JUPYTER_NO_CONFIG", "1")
    return home


class Gateways:
    def __init__(self, cluster: LocalCluster, home: Path) -> None:
        self.cluster, self.home, self.apps = cluster, home, []

    async def start(self, *extra: str) -> ElasticGatewayApp:
        app = await start_gateway(self.cluster, self.home, *extra)
        self.apps.append(app)
        return app

    async def close(self) -> None:
        for app in self.apps:
            await app.stop_serving()


@pytest_asyncio.fixture
async def gateways(small_cluster: LocalCluster, jupyter_env: Path) -> AsyncIterator[Gateways]:
    g = Gateways(small_cluster, jupyter_env)
    try:
        yield g
    finally:
        await g.close()


async def apply(kube: KubeClient, km: ElasticMappingKernelManager, doc: dict[str, Any]) -> None:
    await kube.create(R.KERNELSPECS, doc)
    specs = km._kernelspecs
    assert specs is not None
    await specs.wait_for(lambda o: o is not None, doc["metadata"]["name"], timeout=10)


def gpu_spec(name: str, **culling: str) -> dict[str, Any]:
    doc = derived_kernelspec("python-gpu", name, launchTimeout="90s")
    doc["spec"]["culling"] = {"idleTimeout": "0", "reclaimAfter": "0", "maxAge": "0", **culling}
    return doc


async def wait_until(predicate: Any, timeout: float = 60.0) -> None:
    """Wait for in-process state the gateway changes on its own (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def record_message(kube: KubeClient, kernel_id: str) -> str:
    record = await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id))
    return str((record.get("status") or {}).get("message") or "")


async def test_per_kernelspec_idle_timeouts(gateways: Gateways, kube: KubeClient) -> None:
    gw = await gateways.start()
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


async def test_gpu_quota_refuses_at_once(gateways: Gateways) -> None:
    gw = await gateways.start("--ElasticMappingKernelManager.gpu_quota_per_user=1")
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
        gateways: Gateways, kube: KubeClient) -> None:
    gw = await gateways.start()
    km: ElasticMappingKernelManager = gw.kernel_manager
    await apply(kube, km, gpu_spec("gpu-shared", reclaimAfter="1s"))

    idle_id = await km.start_kernel(kernel_name="gpu-shared", user="alice")
    busy_id = await km.start_kernel(kernel_name="gpu-shared", user="bob")
    busy_ws = await KernelWS.open(gw.url, busy_id)
    idle_ws = await KernelWS.open(gw.url, idle_id)
    try:
        busy_msg = busy_ws.send("execute_request", {"code": "import time; time.sleep(120)",
                                                    "silent": False})
        await busy_ws.wait_for(lambda m: m["msg_type"] == "status"
                               and m["parent_header"].get("msg_id") == busy_msg
                               and m["content"]["execution_state"] == "busy")

        carol = asyncio.ensure_future(km.start_kernel(kernel_name="gpu-shared", user="carol"))
        try:
            await wait_until(lambda: bool(km.gpu_queue.snapshot()), timeout=30)
            waiting = km.gpu_queue.snapshot()[0]
            assert waiting["user"] == "carol" and waiting["position"] == 1
            status = json_of(await api(gw.url, "GET", "/api/elastic/status"))
            assert [w["user"] for w in status["gpu_queue"]] == ["carol"]

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
    finally:
        busy_ws.close()
        idle_ws.close()


async def test_queue_is_fair_across_users(gateways: Gateways, kube: KubeClient) -> None:
    gw = await gateways.start()
    km: ElasticMappingKernelManager = gw.kernel_manager
    await apply(kube, km, gpu_spec("gpu-fair"))  # reclaim off: only shutdowns free GPUs
    holders = [await km.start_kernel(kernel_name="gpu-fair", user="holder") for _ in range(2)]

    starts: dict[str, asyncio.Future[str]] = {}
    try:
        for i in range(5):
            starts[f"a{i}"] = asyncio.ensure_future(
                km.start_kernel(kernel_name="gpu-fair", user="alice"))
            await wait_until(lambda: len(km.gpu_queue.snapshot()) == i + 1, timeout=30)
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
