"""End to end: notebook server --gateway-url → our gateway → kernels in pods of the local cluster.

Everything goes through real protocols: the notebook server is a plain ``jupyter_server``
subprocess with jupyter_server's own GatewayClient; the gateway is ours; kernels run as
processes of pods that the local cluster's kubelet started; the gateway reaches them over ZeroMQ.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import pytest_asyncio

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import PODS, SECRETS, KubeClient, KubeError
from elastic_kernels.localcluster.cluster import LocalCluster

from .conftest import GatewayFactory, derived_kernelspec
from .gateway.support import KernelWS, api, json_of
from .gateway.test_notebook_server import run_notebook_server
from .gatewayproc import eventually

pytestmark = pytest.mark.timeout(120)


@pytest_asyncio.fixture
async def gateway(make_cluster_gateway: GatewayFactory) -> ElasticGatewayApp:
    return await make_cluster_gateway()


async def test_notebook_server_runs_a_gpu_kernel_in_a_pod(
        gateway: ElasticGatewayApp, cluster: LocalCluster, kube: KubeClient,
        tmp_path: Path) -> None:
    async for server in run_notebook_server(
            gateway, tmp_path,
            ["--ServerApp.jpserver_extensions=elastic_kernels.notebook=True"]):
        specs = json_of(await api(server.url, "GET", "/api/kernelspecs", token=server.token))
        assert specs["kernelspecs"]["python-gpu"]["spec"]["display_name"] == "Python on GPU"
        assert "python-cpu" in specs["kernelspecs"]

        started = await api(server.url, "POST", "/api/kernels", {"name": "python-gpu"},
                            token=server.token)
        assert started.code == 201, started.body
        kernel_id = json_of(started)["id"]

        ws = await KernelWS.open(server.url, kernel_id, token=server.token)
        try:
            result = await ws.execute(
                "import os\n"
                "print(os.environ['CUDA_VISIBLE_DEVICES'], os.environ['KERNEL_USERNAME'])")
        finally:
            ws.close()
        assert result["reply"]["status"] == "ok", result
        devices, user = result["stdout"].split()
        assert devices in {"0", "1"}
        # The kernel runs as the gateway's authenticated user, recorded on its JupyterKernel.
        record = await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id))
        assert record["spec"]["user"] == user
        assert record["status"]["phase"] == "Running"

        deleted = await api(server.url, "DELETE", f"/api/kernels/{kernel_id}",
                            token=server.token)
        assert deleted.code == 204, deleted.body
        with pytest.raises(KubeError):
            await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id))


async def test_gateway_reports_the_pod_and_cleans_up(
        gateway: ElasticGatewayApp, cluster: LocalCluster, kube: KubeClient) -> None:
    started = await api(gateway.url, "POST", "/api/kernels", {"name": "python-gpu"})
    assert started.code == 201, started.body
    model = json_of(started)
    kernel_id = model["id"]
    elastic = model["elastic"]
    assert elastic["phase"] == "Running"
    assert elastic["gpus"] == 1
    assert elastic["node"].startswith("local-node-")
    assert elastic["pod"] == R.kernel_pod_name(kernel_id)

    pod = await kube.get(PODS, elastic["pod"])
    assert pod["status"]["phase"] == "Running"
    # The key is in the Secret only, never in the pod spec or the API answer.
    secret = await kube.get(SECRETS, R.key_secret_name(kernel_id))
    key = base64.b64decode(secret["data"]["key"]).decode()
    assert key not in started.body.decode()
    assert key not in json.dumps(pod)

    ws = await KernelWS.open(gateway.url, kernel_id)
    try:
        result = await ws.execute("x = 6 * 7; print(x)")
        assert result["stdout"] == "42\n"
    finally:
        ws.close()

    restarted = await api(gateway.url, "POST", f"/api/kernels/{kernel_id}/restart")
    assert restarted.code == 200, restarted.body
    model = json_of(await api(gateway.url, "GET", f"/api/kernels/{kernel_id}"))
    assert model["elastic"]["pod"] == R.kernel_pod_name(kernel_id, 1)
    assert model["elastic"]["restart_count"] == 1
    ws = await KernelWS.open(gateway.url, kernel_id)
    try:
        result = await ws.execute("print('x' in globals())")
        assert result["stdout"] == "False\n"
    finally:
        ws.close()

    deleted = await api(gateway.url, "DELETE", f"/api/kernels/{kernel_id}")
    assert deleted.code == 204
    for resource, name in ((R.JUPYTERKERNELS, R.kernel_object_name(kernel_id)),
                           (SECRETS, R.key_secret_name(kernel_id))):
        with pytest.raises(KubeError) as err:
            await kube.get(resource, name)
        assert err.value.not_found


async def test_interrupt_through_the_gateway(gateway: ElasticGatewayApp) -> None:
    started = await api(gateway.url, "POST", "/api/kernels", {"name": "python-cpu"})
    kernel_id = json_of(started)["id"]
    ws = await KernelWS.open(gateway.url, kernel_id)
    try:
        msg_id = await ws.start_busy("while True: pass")
        interrupted = await api(gateway.url, "POST", f"/api/kernels/{kernel_id}/interrupt")
        assert interrupted.code == 204
        reply = await ws.wait_for(lambda m: m["msg_type"] == "execute_reply"
                                  and m["parent_header"].get("msg_id") == msg_id)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
    finally:
        ws.close()


async def test_kernelspecs_appear_and_disappear_without_restart(
        gateway: ElasticGatewayApp, kube: KubeClient) -> None:
    await kube.create(R.KERNELSPECS, derived_kernelspec("python-cpu", "late", displayName="Late"))

    async def listed() -> bool:
        specs = json_of(await api(gateway.url, "GET", "/api/kernelspecs"))["kernelspecs"]
        return "late" in specs

    await eventually(listed, timeout=30)
    started = await api(gateway.url, "POST", "/api/kernels", {"name": "late"})
    assert started.code == 201, started.body
    await api(gateway.url, "DELETE", f"/api/kernels/{json_of(started)['id']}")

    await kube.delete(R.KERNELSPECS, "late")

    async def gone() -> bool:
        return not await listed()

    await eventually(gone, timeout=30)
    refused = await api(gateway.url, "POST", "/api/kernels", {"name": "late"})
    assert refused.code == 404


async def test_start_failures_name_their_cause(
        gateway: ElasticGatewayApp, kube: KubeClient) -> None:
    await kube.create(R.KERNELSPECS, derived_kernelspec(
        "python-cpu", "broken-image", image="example.org/does-not-exist:1", launchTimeout="10m"))
    gpu_hog = derived_kernelspec("python-gpu", "gpu-hog", launchTimeout="10m")
    gpu_hog["spec"]["resources"]["limits"]["nvidia.com/gpu"] = 8
    await kube.create(R.KERNELSPECS, gpu_hog)

    async def both_listed() -> bool:
        specs = json_of(await api(gateway.url, "GET", "/api/kernelspecs"))["kernelspecs"]
        return {"broken-image", "gpu-hog"} <= set(specs)

    await eventually(both_listed, timeout=30)

    failed = await api(gateway.url, "POST", "/api/kernels", {"name": "broken-image"})
    assert failed.code == 500, failed.body
    body = json_of(failed)
    assert body["reason"] in ("ErrImagePull", "ImagePullBackOff")
    assert "does-not-exist" in body["message"]

    # The client says it waits 3 s (GatewayClient sends KERNEL_LAUNCH_TIMEOUT): the gateway
    # gives up first and says why, rather than starting a kernel nobody waits for.
    waited = await api(gateway.url, "POST", "/api/kernels",
                       {"name": "gpu-hog", "env": {"KERNEL_LAUNCH_TIMEOUT": "3"}})
    assert waited.code == 504, waited.body
    body = json_of(waited)
    assert "Insufficient nvidia.com/gpu" in body["message"]
    assert gateway.kernel_manager.list_kernel_ids() == []
