"""Two gateways on one namespace: any replica serves any kernel.

A kernel started through gateway A is used, interrupted, restarted and shut down through
gateway B, which hydrates it on demand from the cluster. A keeps holding the kernel meanwhile
and follows what B does through the watch: after B's restart A's open websocket carries on with
the new pod (no second restart: one new pod, ``restartCount`` 1); after B's shutdown A lets the
kernel go instead of "auto-restarting" it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from elastic_kernels.kube import resources as R
from elastic_kernels.leases import lease_name
from elastic_kernels.kube.client import LEASES, PODS, KubeClient, KubeError

from .gateway.support import KernelWS, api, json_of
from .gatewayproc import Gateways, eventually

pytestmark = pytest.mark.timeout(90)


def status_is(state: str) -> Any:
    return lambda m: m["msg_type"] == "status" and m["content"]["execution_state"] == state


async def kernel_pods(kube: KubeClient, kernel_id: str) -> list[str]:
    listed = await kube.list(PODS, label_selector=f"{R.LABEL_KERNEL_ID}={kernel_id}")
    return sorted(p["metadata"]["name"] for p in listed["items"]
                  if not p["metadata"].get("deletionTimestamp"))


async def test_kernel_started_on_a_is_used_restarted_and_shut_down_on_b(
        kube: KubeClient, gateways: Gateways) -> None:
    a, b = await asyncio.gather(gateways.start("a"), gateways.start("b"))
    kernel_id = await a.start_kernel("python-cpu")
    # Every replica lists the same kernels (B from the shared records, before it holds this one).
    await eventually(lambda: _listed_alike(a, b, kernel_id))

    ws_a = await KernelWS.open(a.url, kernel_id)
    ws_b: KernelWS | None = None
    try:
        assert (await ws_a.execute("shared = 'set through A'"))["reply"]["status"] == "ok"

        # B has never seen the kernel: the websocket's request hydrates it.
        ws_b = await KernelWS.open(b.url, kernel_id)
        assert (await ws_b.execute("print(shared)"))["stdout"] == "set through A\n"
        assert kernel_id in await b.kernel_ids()
        # A live claimant keeps its claim; B, which only serves the kernel, does not take it.
        # (A gateway without a Lease has no live claim, and then B adopts the kernel.)
        record = await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id))
        try:
            await kube.get(LEASES, lease_name("test-gateway-a"))
            claimant = "test-gateway-a"
        except KubeError as e:
            assert e.not_found, e
            claimant = "test-gateway-b"
        assert record["spec"]["gateway"] == claimant

        # Interrupt through B.
        msg_id = await ws_b.start_busy("while True: pass")  # the loop runs (not only "busy")
        assert (await api(b.url, "POST", f"/api/kernels/{kernel_id}/interrupt")).code == 204
        reply = await ws_b.wait_for(lambda m: m["msg_type"] == "execute_reply"
                                    and m["parent_header"].get("msg_id") == msg_id)
        assert reply["content"]["ename"] == "KeyboardInterrupt"

        # Restart through B: one new pod, and A follows it.
        restarted = await api(b.url, "POST", f"/api/kernels/{kernel_id}/restart")
        assert restarted.code == 200, restarted.body
        assert json_of(restarted)["elastic"]["restart_count"] == 1
        await ws_a.wait_for(status_is("restarting"))
        after = await ws_a.execute("print('shared' in globals())")
        assert after["stdout"] == "False\n", after
        # B's own websocket was moved to the new pod as well.
        assert (await ws_b.execute("print(1 + 1)"))["stdout"] == "2\n"
        assert await kernel_pods(kube, kernel_id) == [R.kernel_pod_name(kernel_id, 1)]
        record = await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id))
        assert record["status"]["restartCount"] == 1
        assert record["status"]["phase"] == "Running"
        model_a = json_of(await api(a.url, "GET", f"/api/kernels/{kernel_id}"))
        assert model_a["elastic"]["pod"] == R.kernel_pod_name(kernel_id, 1)

        # Shutdown through B: final. A tells its client and lets the kernel go.
        assert (await api(b.url, "DELETE", f"/api/kernels/{kernel_id}")).code == 204
        await ws_a.wait_for(status_is("dead"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while (await api(a.url, "GET", f"/api/kernels/{kernel_id}")).code != 404:
            assert loop.time() < deadline, "gateway A still holds the deleted kernel"
            await asyncio.sleep(0.05)
        with pytest.raises(KubeError) as gone:
            await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id))
        assert gone.value.not_found
        assert not re.search(r"died .*; restarting it", a.log), a.log[-3000:]
        assert await kernel_pods(kube, kernel_id) == []
    finally:
        ws_a.close()
        if ws_b is not None:
            ws_b.close()


async def test_unknown_and_malformed_kernel_ids_are_404_without_side_effects(
        kube: KubeClient, gateways: Gateways) -> None:
    b = await gateways.start("b")
    for kernel_id in ("00000000-0000-4000-8000-000000000000", "not-a-kernel"):
        response = await api(b.url, "GET", f"/api/kernels/{kernel_id}")
        assert response.code == 404, response.body
    assert await b.kernel_ids() == set()


async def _listed_alike(a: Any, b: Any, kernel_id: str) -> bool:
    listed_a, listed_b = await a.kernel_ids(), await b.kernel_ids()
    return kernel_id in listed_a and listed_a == listed_b
