"""A kernel pod deleted or killed underneath the gateway: seen from the watch, handled per policy.

* ``restartPolicy: Restart`` (python-cpu): the client's websocket gets ``restarting``, a new pod
  runs the kernel (``restartCount`` 1, the cause in ``status.message``) and the same websocket
  keeps working.
* ``restartPolicy: Fail``: the client gets ``dead``; the kernel model says ``execution_state:
  dead`` with the reason, and so does the JupyterKernel (phase Failed); shutting it down works.
* The JupyterKernel deleted (an admin, the cull job): final, the kernel is not restarted.

No timing thresholds: the tests wait for the events (within the test timeout). The time from
the delete call to the client's status message is printed (``-s``) as a measurement.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import pytest_asyncio

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import PODS, KubeClient, KubeError
from elastic_kernels.kube.informer import at_least_version

from .conftest import GatewayFactory, derived_kernelspec
from .gateway.support import KernelWS, api, json_of

pytestmark = pytest.mark.timeout(60)


@pytest_asyncio.fixture
async def gateway(kube: KubeClient, make_cluster_gateway: GatewayFactory) -> ElasticGatewayApp:
    await kube.create(R.KERNELSPECS, derived_kernelspec("python-cpu", "python-cpu-fail",
                                                        restartPolicy="Fail"))
    return await make_cluster_gateway()


def status_is(state: str) -> Any:
    return lambda m: m["msg_type"] == "status" and m["content"]["execution_state"] == state


async def start(gateway: ElasticGatewayApp, name: str) -> str:
    response = await api(gateway.url, "POST", "/api/kernels", {"name": name})
    assert response.code == 201, response.body
    return str(json_of(response)["id"])


async def exit_with_code_3(gateway: ElasticGatewayApp, kernel_id: str) -> None:
    """The kernel's process exits on its own; returns when the client has heard ``dead``."""
    ws = await KernelWS.open(gateway.url, kernel_id)
    try:
        ws.send("execute_request", {"code": "import os; os._exit(3)", "silent": False})
        await ws.wait_for(status_is("dead"))
    finally:
        ws.close()


async def model(gateway: ElasticGatewayApp, kernel_id: str) -> dict[str, Any]:
    response = await api(gateway.url, "GET", f"/api/kernels/{kernel_id}")
    assert response.code == 200, response.body
    return dict(json_of(response))


async def test_deleted_pod_restarts_the_kernel_and_the_websocket_carries_on(
        gateway: ElasticGatewayApp, kube: KubeClient) -> None:
    kernel_id = await start(gateway, "python-cpu")
    ws = await KernelWS.open(gateway.url, kernel_id)
    try:
        assert (await ws.execute("before = 1"))["reply"]["status"] == "ok"
        loop = asyncio.get_running_loop()
        deleted_at = loop.time()
        await kube.delete(PODS, R.kernel_pod_name(kernel_id))
        await ws.wait_for(status_is("restarting"))
        print(f"\nclient saw 'restarting' {1000 * (loop.time() - deleted_at):.0f} ms after "
              "the pod was deleted")

        # The same websocket reaches the kernel in its new pod, which starts afresh; the client
        # is told when it is back (the gateway wakes the websocket as on open).
        await ws.wait_for(status_is("idle"), timeout=40)
        result = await ws.execute("print('before' in globals())", timeout=40)
        assert result["stdout"] == "False\n", result
        elastic = (await model(gateway, kernel_id))["elastic"]
        assert elastic["restart_count"] == 1
        assert elastic["pod"] == R.kernel_pod_name(kernel_id, 1)
        record = await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id))
        assert record["status"]["phase"] == "Running"
        assert record["status"]["reason"] == "Restarted"
        assert "Pod" in record["status"]["message"], record["status"]
    finally:
        ws.close()


async def test_killed_kernel_with_fail_policy_is_reported_dead_with_the_reason(
        gateway: ElasticGatewayApp, kube: KubeClient) -> None:
    kernel_id = await start(gateway, "python-cpu-fail")
    await exit_with_code_3(gateway, kernel_id)
    found = await model(gateway, kernel_id)
    assert found["execution_state"] == "dead"
    assert "exited with code 3" in found["reason"], found
    assert found["elastic"]["phase"] == "Failed"
    assert found["elastic"]["reason"] == "ContainerExited"
    assert R.kernel_pod_name(kernel_id, 1) not in {
        p["metadata"]["name"] for p in (await kube.list(PODS))["items"]}

    # A dead kernel is still the user's to shut down (or restart).
    assert (await api(gateway.url, "DELETE", f"/api/kernels/{kernel_id}")).code == 204
    with pytest.raises(KubeError) as gone:
        await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id))
    assert gone.value.not_found


async def test_dead_is_announced_after_the_record_says_failed_even_if_its_watch_lags(
        gateway: ElasticGatewayApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that reads the kernel's model when it hears ``dead`` finds phase Failed, even
    when the JupyterKernel watch delivers the write later than the kernel's death is seen (CI
    saw ``Running`` once on a loaded machine). Here the record watch lags by a fixed 0.5 s."""
    kernel_id = await start(gateway, "python-cpu-fail")
    records = gateway.kernel_manager._kernel_records
    assert records is not None
    loop = asyncio.get_running_loop()
    deliver = records._deliver

    def lagging(event_type: str, obj: Any) -> None:
        loop.call_later(0.5, deliver, event_type, obj)

    monkeypatch.setattr(records, "_deliver", lagging)
    await exit_with_code_3(gateway, kernel_id)
    found = await model(gateway, kernel_id)
    assert found["elastic"]["phase"] == "Failed", found
    assert (await api(gateway.url, "DELETE", f"/api/kernels/{kernel_id}")).code == 204


async def test_deleting_the_jupyterkernel_is_final(
        gateway: ElasticGatewayApp, kube: KubeClient) -> None:
    kernel_id = await start(gateway, "python-cpu")
    ws = await KernelWS.open(gateway.url, kernel_id)
    try:
        await kube.delete(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id))
        await ws.wait_for(status_is("dead"))
    finally:
        ws.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while kernel_id in gateway.kernel_manager:
        assert loop.time() < deadline, "the gateway still holds the deleted kernel"
        await asyncio.sleep(0.05)
    assert (await api(gateway.url, "GET", f"/api/kernels/{kernel_id}")).code == 404
    pods = await kube.list(PODS, label_selector=f"{R.LABEL_KERNEL_ID}={kernel_id}")
    assert [p["metadata"]["name"] for p in pods["items"]
            if not p["metadata"].get("deletionTimestamp")] == []


async def test_a_live_decision_never_restarts_on_a_second_look(
        gateway: ElasticGatewayApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch caches say the pod runs, so the kernel is alive; jupyter_client's own poll
    would ask the provisioner again and restart the kernel on a "dead" answer. That second
    look is what a pod deleted with its JupyterKernel (a cull) answers while the record's
    deletion is still on its way, and restarting then resurrects a deleted kernel."""
    kernel_id = await start(gateway, "python-cpu")
    km = gateway.kernel_manager.get_kernel(kernel_id)
    restarter = km._restarter
    restarts: list[Any] = []

    async def dead() -> int:
        return 1

    async def restart_kernel(**kwargs: Any) -> None:
        restarts.append(kwargs)

    monkeypatch.setattr(km.provisioner, "poll", dead)
    monkeypatch.setattr(km, "restart_kernel", restart_kernel)
    await restarter.poll()  # decides from the caches: the pod runs
    assert restarts == []
    assert restarter.running


def test_a_written_resource_version_is_reached_by_itself_or_a_later_integer_one() -> None:
    assert at_least_version("17", "17") and at_least_version("18", "17")
    assert not at_least_version("16", "17")
    # Opaque versions are only known equal, never known later.
    assert at_least_version("a7", "a7") and not at_least_version("b7", "a7")
    assert not at_least_version("", "17")
