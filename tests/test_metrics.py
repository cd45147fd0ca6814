"""``/metrics`` of a gateway on the local cluster, read with prometheus_client's own parser."""

from __future__ import annotations

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from elastic_kernels.gateway.app import ElasticGatewayApp

from .conftest import GatewayFactory
from .gateway.promtext import scrape
from .gateway.support import TOKEN, api, json_of
from .gatewayproc import wait_until

pytestmark = pytest.mark.timeout(120)


async def test_a_start_is_measured_and_its_kernel_counted_by_phase(
        make_cluster_gateway: GatewayFactory) -> None:
    gw: ElasticGatewayApp = await make_cluster_gateway()
    gid = gw.gateway_id
    before = await scrape(gw.url)
    assert before.value("elastic_kernels_gateway_info", gateway_id=gid) == 1
    assert before.value("elastic_kernels_kernels", gateway_id=gid) == 0

    started = await api(gw.url, "POST", "/api/kernels", {"name": "python-cpu"})
    assert started.code == 201, started.body
    kernel_id = json_of(started)["id"]
    metrics = await scrape(gw.url)
    assert metrics.type_of("elastic_kernels_kernel_start_seconds") == "histogram"
    assert metrics.value("elastic_kernels_kernel_start_seconds_count", gateway_id=gid,
                         kernelspec="python-cpu", outcome="ok") == 1
    assert metrics.value("elastic_kernels_kernel_starts_total", gateway_id=gid,
                         outcome="ok") == 1
    assert metrics.value("elastic_kernels_kernels", gateway_id=gid) == 1
    assert metrics.value("elastic_kernels_gpus_held", gateway_id=gid) == 0
    assert metrics.value("elastic_kernels_gpu_queue_length", gateway_id=gid) == 0
    # The phase is the record's, as `kubectl get jupyterkernels` shows it.
    phase = json_of(await api(gw.url, "GET", f"/api/kernels/{kernel_id}"))["elastic"]["phase"]
    assert metrics.value("elastic_kernels_kernels_by_phase", gateway_id=gid, phase=phase) == 1

    # Prometheus asks for OpenMetrics and gets it.
    negotiated = await _get(gw, "application/openmetrics-text; version=1.0.0")
    assert negotiated.startswith("application/openmetrics-text")

    assert (await api(gw.url, "DELETE", f"/api/kernels/{kernel_id}")).code == 204
    await wait_until(lambda: kernel_id not in gw.kernel_manager, timeout=30)
    after = await scrape(gw.url)
    assert after.value("elastic_kernels_kernels", gateway_id=gid) == 0
    assert after.value("elastic_kernels_kernels_by_phase", gateway_id=gid, phase=phase) is None


async def _get(gw: ElasticGatewayApp, accept: str) -> str:
    """``/metrics`` with an ``Accept`` header: its content type (the body must be complete)."""
    response = await AsyncHTTPClient().fetch(HTTPRequest(
        gw.url.rstrip("/") + "/metrics",
        headers={"Authorization": f"token {TOKEN}", "Accept": accept}), raise_error=False)
    assert response.code == 200, response.body
    assert (response.body or b"").rstrip().endswith(b"# EOF")
    return str(response.headers["Content-Type"])
