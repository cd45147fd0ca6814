"""Culling by GPU use on the local cluster: the gateway scrapes the DCGM-exporter stand-in.

Kernels mark their simulated GPU busy with ``elastic_kernels.localcluster.simgpu``; the stand-in
(``localcluster/dcgm.py``) serves dcgm-exporter's metrics for it over HTTP; the gateway's
culler reads them with the real source (``culling/gpusource.py``) and applies the real policy.
Culler passes are 0.3 s apart and the kernelspecs' timeouts a second or two.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from elastic_kernels.culling.gpusource import parse_exposition
from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.gateway.lifecycle.kernelmanager import ElasticMappingKernelManager
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import KubeClient
from elastic_kernels.localcluster.cluster import LocalCluster
from elastic_kernels.localcluster.dcgm import DcgmExporterStandIn
from tornado.httpclient import AsyncHTTPClient

from .conftest import GatewayFactory, derived_kernelspec, running_cluster
from .test_cull_cron import run_cull
from .gateway.promtext import scrape
from .gateway.support import KernelWS, api, json_of
from .gatewayproc import wait_until

pytestmark = pytest.mark.timeout(120)

#: Runs in the kernel: a background thread holds the GPU busy until ``gpu_done`` is set, while
#: the cell itself returns at once (Jupyter shows the kernel idle).
BACKGROUND_TRAINING = """
import threading
from elastic_kernels.localcluster import simgpu
gpu_done = threading.Event()
gpu_marked = threading.Event()
def train():
    with simgpu.busy(utilisation=90, memory_mib=4096):
        gpu_marked.set()
        gpu_done.wait()
threading.Thread(target=train, daemon=True).start()
gpu_marked.wait(10)
print("training", gpu_marked.is_set())
"""


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """One node with two simulated GPUs."""
    async with running_cluster(tmp_path, nodes=1, crash_backoff_seconds=None) as c:
        yield c


@pytest.fixture
def exporter(cluster: LocalCluster) -> DcgmExporterStandIn:
    """The cluster's dcgm-exporter stand-in, which it starts with its kubelet."""
    assert cluster.dcgm_exporter is not None
    return cluster.dcgm_exporter


@pytest.fixture
def start_gateway(make_cluster_gateway: GatewayFactory,
                  exporter: DcgmExporterStandIn) -> GatewayFactory:
    """A gateway that culls every 0.3 s and scrapes the stand-in, as it would scrape
    dcgm-exporter on a cluster."""
    async def start(*extra: str) -> ElasticGatewayApp:
        return await make_cluster_gateway("--CullingDefaults.interval=0.3",
                                          "--GpuUseSource.source=scrape",
                                          f"--GpuUseSource.scrape_urls={exporter.url}", *extra)

    return start


async def apply(kube: KubeClient, km: ElasticMappingKernelManager, doc: dict[str, Any]) -> None:
    await kube.create(R.KERNELSPECS, doc)
    specs = km._kernelspecs
    assert specs is not None
    await specs.wait_for(lambda o: o is not None, doc["metadata"]["name"], timeout=10)


def gpu_spec(name: str, **culling: Any) -> dict[str, Any]:
    doc = derived_kernelspec("python-gpu", name, launchTimeout="90s")
    doc["spec"]["culling"] = {"idleTimeout": "0", "reclaimAfter": "0", "maxAge": "0", **culling}
    return doc


async def exporter_page(exporter: DcgmExporterStandIn) -> str:
    response = await AsyncHTTPClient().fetch(exporter.url)
    return (response.body or b"").decode()


async def test_a_connected_cpu_busy_kernel_whose_gpu_idles_is_culled(
        start_gateway: GatewayFactory, kube: KubeClient,
        exporter: DcgmExporterStandIn) -> None:
    gw = await start_gateway()
    km: ElasticMappingKernelManager = gw.kernel_manager
    await apply(kube, km, gpu_spec("gpu-watched", gpuIdleTimeout="2s", gpuIdleThreshold=5))
    kernel_id = await km.start_kernel(kernel_name="gpu-watched", user="alice")
    ws = await KernelWS.open(gw.url, kernel_id)
    try:
        # Connected, and busy with CPU-only work: neither protects a GPU it does not use.
        await ws.start_busy("import time\nwhile True:\n    sum(range(20000)); time.sleep(0.005)")
        pod = R.KernelView.from_object(
            await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id))).pod_name
        samples = parse_exposition(await exporter_page(exporter))
        mine = [s for s in samples if s.pod == pod and s.metric == "DCGM_FI_DEV_GPU_UTIL"]
        assert [s.value for s in mine] == [0.0] and mine[0].container == "kernel"
        await wait_until(lambda: kernel_id not in km, "the GPU-idle kernel is culled",
                         timeout=60)
    finally:
        ws.close()
    gone = await api(gw.url, "GET", f"/api/kernels/{kernel_id}")
    assert gone.code == 404
    assert json_of(gone)["reason"] == "GpuIdleTimeout"
    assert "gpuIdleTimeout of 2s" in json_of(gone)["message"]
    metrics = await scrape(gw.url)
    assert metrics.value("elastic_kernels_culls_total", reason="GpuIdleTimeout") == 1
    assert metrics.value("elastic_kernels_gpu_metrics_up") == 1
    held = metrics.value("elastic_kernels_gpu_seconds_held_total", user="alice",
                         kernelspec="gpu-watched")
    used = metrics.value("elastic_kernels_gpu_seconds_used_total", user="alice",
                         kernelspec="gpu-watched")
    assert held is not None and held > 0 and used == 0


async def test_a_kernel_jupyter_shows_idle_is_kept_while_its_gpu_is_busy(
        start_gateway: GatewayFactory, kube: KubeClient,
        exporter: DcgmExporterStandIn) -> None:
    gw = await start_gateway()
    km: ElasticMappingKernelManager = gw.kernel_manager
    await apply(kube, km, gpu_spec("gpu-trainer", idleTimeout="1s", cullConnected=True))
    trainer = await km.start_kernel(kernel_name="gpu-trainer", user="alice")
    ws = await KernelWS.open(gw.url, trainer)
    try:
        ran = await ws.execute(BACKGROUND_TRAINING)
        assert "training True" in ran["stdout"], ran
        # A second kernel, started after the trainer's last message: idle longer than its
        # timeout it is culled, while the trainer, idle in Jupyter for longer, is kept.
        idler = await km.start_kernel(kernel_name="gpu-trainer", user="bob")
        await wait_until(lambda: idler not in km, "the idle kernel is culled", timeout=60)
        assert trainer in km
        gone = await api(gw.url, "GET", f"/api/kernels/{idler}")
        assert json_of(gone)["reason"] == "IdleTimeout"
        culler = km.culler
        track = culler._gpu_tracks.get(trainer)
        assert track is not None and track.busy is True and track.utilisation == 90
        # The busy GPU counts as activity on the record, so the cron keeps it too.
        record = R.KernelView.from_object(
            await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(trainer)))
        assert record.last_activity is not None and track.last_busy is not None
        samples = parse_exposition(await exporter_page(exporter))
        mine = [s for s in samples if s.pod == record.pod_name]
        assert {(s.metric, s.value) for s in mine} == {("DCGM_FI_DEV_GPU_UTIL", 90.0),
                                                       ("DCGM_FI_DEV_FB_USED", 4096.0)}
        # Training ends: with neither messages nor GPU work the kernel is idle, and culled.
        await ws.execute("gpu_done.set()")
        await wait_until(lambda: trainer not in km, "the trainer is culled once its GPU idles",
                         timeout=60)
    finally:
        ws.close()
    gone = await api(gw.url, "GET", f"/api/kernels/{trainer}")
    assert json_of(gone)["reason"] == "IdleTimeout"
    metrics = await scrape(gw.url)
    used = metrics.value("elastic_kernels_gpu_seconds_used_total", user="alice",
                         kernelspec="gpu-trainer")
    held = metrics.value("elastic_kernels_gpu_seconds_held_total", user="alice",
                         kernelspec="gpu-trainer")
    assert used is not None and held is not None and 0 < used < held


async def test_no_gpu_idle_cull_while_the_source_is_unreachable(
        make_cluster_gateway: GatewayFactory, kube: KubeClient,
        exporter: DcgmExporterStandIn, request: pytest.FixtureRequest) -> None:
    await exporter.stop()
    # The culler's own logger, not the root's handlers: under pytest -n, the tests that ran
    # before in the same worker vary, and what they left configured must not decide this one.
    warnings: list[str] = []
    catch = logging.Handler(logging.WARNING)
    catch.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    culler_log = logging.getLogger("elastic_kernels.gateway.lifecycle.culler")
    # An in-process logging setup of an earlier test (a dictConfig that disables existing
    # loggers, or a raised level) must not silence the logger this test listens to.
    was = (culler_log.disabled, culler_log.level)
    culler_log.disabled = False
    culler_log.setLevel(logging.WARNING)
    culler_log.addHandler(catch)

    def restore() -> None:
        culler_log.removeHandler(catch)
        culler_log.disabled, level = was
        culler_log.setLevel(level)

    request.addfinalizer(restore)
    gw = await make_cluster_gateway("--CullingDefaults.interval=0.3",
                                    "--GpuUseSource.source=scrape",
                                    f"--GpuUseSource.scrape_urls={exporter.url}",
                                    "--GpuUseSource.timeout=1")
    km: ElasticMappingKernelManager = gw.kernel_manager
    await apply(kube, km, gpu_spec("gpu-blind", gpuIdleTimeout="1s"))
    kernel_id = await km.start_kernel(kernel_name="gpu-blind", user="alice")
    culler = km.culler
    # Passes go on, each reading fails, and the running kernel is never judged GPU-idle.
    await wait_until(lambda: kernel_id in culler._gpu_tracks, "the culler sees the kernel",
                     timeout=30)
    failed = culler.gpu_reading_failures
    await wait_until(lambda: culler.gpu_reading_failures >= failed + 5,
                     "five more failed readings", timeout=60)
    assert kernel_id in km
    track = culler._gpu_tracks.get(kernel_id)
    assert track is not None and track.idle_since is None and track.busy is None
    assert any("is unavailable" in m and "no kernel is culled" in m for m in warnings), warnings
    metrics = await scrape(gw.url)
    assert metrics.value("elastic_kernels_gpu_metrics_up") == 0
    assert (metrics.value("elastic_kernels_gpu_metrics_failures_total") or 0) >= 5
    # Back again: the readings resume, and only then does the GPU-idle clock start.
    await exporter.start()
    await wait_until(lambda: kernel_id not in km, "culled once readings resume", timeout=60)
    gone = await api(gw.url, "GET", f"/api/kernels/{kernel_id}")
    assert json_of(gone)["reason"] == "GpuIdleTimeout"


async def test_prometheus_mode_and_the_usage_report(
        make_cluster_gateway: GatewayFactory, kube: KubeClient, cluster: LocalCluster,
        exporter: DcgmExporterStandIn) -> None:
    gw = await make_cluster_gateway("--CullingDefaults.interval=0.3",
                                    "--GpuUseSource.source=prometheus",
                                    f"--GpuUseSource.prometheus_url={exporter.query_url}")
    km: ElasticMappingKernelManager = gw.kernel_manager
    await apply(kube, km, gpu_spec("gpu-queried"))
    kernel_id = await km.start_kernel(kernel_name="gpu-queried", user="carol")
    ws = await KernelWS.open(gw.url, kernel_id)
    try:
        ran = await ws.execute(BACKGROUND_TRAINING)
        assert "training True" in ran["stdout"], ran
        culler = km.culler

        def busy() -> bool:
            track = culler._gpu_tracks.get(kernel_id)
            return track is not None and track.busy is True

        await wait_until(busy, "the query shows the GPU busy", timeout=30)
        reading = culler.gpu_reading
        assert reading is not None and reading.available and not reading.errors
        pod = R.KernelView.from_object(
            await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id))).pod_name
        use = reading.for_pod("default", pod)
        assert use is not None and (use.utilisation, use.memory_mib) == (90, 4096)
        # Another user's kernel holds a GPU and does nothing with it.
        idler = await km.start_kernel(kernel_name="gpu-queried", user="dave")

        code, out, err = await run_cull("--report", "-o", "json", "--scrape-url", exporter.url,
                                        kubeconfig=cluster.kubeconfig_path)
        assert code == 0, err
        report = json.loads(out)
        assert report["source"]["available"] is True
        rows = {r["user"]: r for r in report["rows"]}
        assert set(rows) == {"carol", "dave"}
        assert (rows["carol"]["gpus"], rows["carol"]["idleGpus"]) == (1, 0)
        assert (rows["dave"]["gpus"], rows["dave"]["idleGpus"]) == (1, 1)
        assert rows["carol"]["gpuSecondsHeld"] > 0
        # Scraping reads only the present: GPU-seconds used need a Prometheus's history.
        assert rows["carol"]["gpuSecondsUsed"] is None
        kernels = {k["kernelId"]: k for k in report["kernels"]}
        assert kernels[kernel_id]["utilisation"] == 90 and kernels[idler]["gpuIdle"] is True

        code, out, err = await run_cull("--report", "--scrape-url", exporter.url,
                                        kubeconfig=cluster.kubeconfig_path)
        assert code == 0, err
        header, *lines = out.splitlines()
        assert header.split()[:4] == ["USER", "SPEC", "KERNELS", "GPUS"]
        dave = next(line for line in lines if line.startswith("dave"))
        assert dave.split()[-1] == "1"  # its one GPU sits idle now
    finally:
        ws.close()
    await asyncio.wait_for(km.shutdown_kernel(kernel_id), 30)
