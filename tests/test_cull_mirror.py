"""The gateway mirrors connections and busy state onto JupyterKernel records, on change only, and
the cull cron protects what they show.

In-process gateways on the local cluster culling every 0.2 s (only the prompt write on a
websocket's open is tested with passes that never come). "Nothing written" is checked across
counted culler passes, by the record's resourceVersion and the API server's request counter;
nothing depends on how long anything takes. The cron runs in-process (``run_cull``), as in
test_lease. Its kernelspec sets no idle timeout, so the gateway (default: off) never culls the
kernel itself, and the cron's own default decides.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from elastic_kernels import cull
from elastic_kernels.culling import actions as A
from elastic_kernels.culling import policy as C
from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.gateway.lifecycle.culler import GatewayCuller
from elastic_kernels.gateway.lifecycle.kernelmanager import ElasticMappingKernelManager
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import KubeClient, KubeError
from elastic_kernels.localcluster.cluster import LocalCluster

from .conftest import GatewayFactory, derived_kernelspec
from .gateway.support import KernelWS
from .gatewayproc import wait_until

pytestmark = pytest.mark.timeout(120)

SPEC = "mirror-cpu"
FAST = "--CullingDefaults.interval=0.2"
#: The cron's default for kernelspecs that set none (SPEC sets none).
CRON_POLICY = C.Policy(idle_timeout=3600)
LONG_AGO = datetime.now(timezone.utc) - timedelta(hours=5)


class Passes:
    """Counts the culler's completed passes, so a test can let some go by."""

    def __init__(self, culler: GatewayCuller) -> None:
        self.done = 0
        run_once = culler.run_once

        async def counted() -> list[C.CullDecision]:
            try:
                return await run_once()
            finally:
                self.done += 1

        culler.run_once = counted  # type: ignore[method-assign]

    async def wait(self, n: int) -> None:
        """Until ``n`` passes that started after this call have completed."""
        target = self.done + n + 1  # one may be under way, having read the state before
        await wait_until(lambda: self.done >= target, f"{n} culler passes", timeout=60)


async def start(make_cluster_gateway: GatewayFactory, kube: KubeClient,
                *argv: str) -> tuple[ElasticGatewayApp, ElasticMappingKernelManager, str]:
    """A gateway and one idle kernel of SPEC, whose record the gateway's watch holds."""
    gw = await make_cluster_gateway(*argv)
    km: ElasticMappingKernelManager = gw.kernel_manager
    await kube.create(R.KERNELSPECS, derived_kernelspec("python-cpu", SPEC, culling={}))
    assert km._kernelspecs is not None
    await km._kernelspecs.wait_for(lambda o: o is not None, SPEC, timeout=10)
    kernel_id = await km.start_kernel(kernel_name=SPEC, user="alice")
    return gw, km, kernel_id


def status(km: ElasticMappingKernelManager, kernel_id: str) -> dict[str, Any]:
    return dict((km.kernel_record(kernel_id) or {}).get("status") or {})


async def recorded(km: ElasticMappingKernelManager, kernel_id: str, **fields: Any) -> None:
    """Until the record (as the gateway's watch has it) shows ``fields``."""
    assert km._kernel_records is not None
    await km._kernel_records.wait_for(
        lambda o: o is not None and all((o.get("status") or {}).get(k) == v
                                        for k, v in fields.items()),
        R.kernel_object_name(kernel_id), timeout=30)


async def connect(gw: ElasticGatewayApp, kernel_id: str) -> KernelWS:
    ws = await KernelWS.open(gw.url, kernel_id)
    reply = await ws.execute("1")  # the kernel answers through this gateway
    assert reply["reply"]["status"] == "ok"
    return ws


async def make_long_idle(kube: KubeClient, km: ElasticMappingKernelManager,
                         kernel_id: str) -> None:
    """As if nothing happened for five hours: live activity and record agree on it."""
    km.get_kernel(kernel_id).last_activity = LONG_AGO
    await kube.patch(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id),
                     {"status": {"lastActivity": R.format_timestamp(LONG_AGO)}},
                     subresource="status")
    await recorded(km, kernel_id, lastActivity=R.format_timestamp(LONG_AGO))


async def cron(kube: KubeClient) -> set[str]:
    """One cron run; the kernel ids it culled."""
    report = await cull.run_cull(kube, "default", CRON_POLICY, orphan_grace=300)
    assert not report.failed, report.results
    return {r.decision.kernel.kernel_id for r in report.results
            if r.outcome is A.CullOutcome.DELETED}


async def test_a_connected_idle_kernel_is_recorded_once_then_never_written(
        make_cluster_gateway: GatewayFactory, kube: KubeClient, cluster: LocalCluster) -> None:
    gw, km, kernel_id = await start(make_cluster_gateway, kube, FAST)
    passes = Passes(km.culler)
    # Activity may be written at every pass: whatever is written below is not rate-limited away.
    km.culler.mirror_interval = 0.0
    ws = await connect(gw, kernel_id)
    try:
        await recorded(km, kernel_id, connections=1)
        await passes.wait(2)  # the activity of connecting is mirrored
        before = km.kernel_record(kernel_id)
        assert before is not None
        counted = cluster.request_counter.snapshot()

        await passes.wait(5)

        after = await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id))
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        writes = cluster.request_counter.since(counted)
        assert cluster.request_counter.total(writes, verbs=("patch", "update"),
                                             resource="jupyterkernels") == 0, writes
        assert after["status"]["connections"] == 1
        assert after["status"].get("executionState", "idle") == "idle"
    finally:
        ws.close()
    # Closing waits for the pass (no write on the close itself), which then writes it once.
    await recorded(km, kernel_id, connections=0)


async def test_a_first_connection_is_recorded_as_it_opens(
        make_cluster_gateway: GatewayFactory, kube: KubeClient, cluster: LocalCluster) -> None:
    # Passes an hour apart: none comes during the test, so only the open can write.
    gw, km, kernel_id = await start(make_cluster_gateway, kube,
                                    "--CullingDefaults.interval=3600")
    assert "connections" not in status(km, kernel_id)
    ws = await KernelWS.open(gw.url, kernel_id)
    try:
        await recorded(km, kernel_id, connections=1)
        await wait_until(lambda: not km.culler._connecting, "the write on open to finish")
        # A second tab, or a reload, finds the record connected already: nothing to write.
        counted = cluster.request_counter.snapshot()
        again = await KernelWS.open(gw.url, kernel_id)
        await wait_until(lambda: km._kernel_connections.get(kernel_id) == 2, "two connections")
        await wait_until(lambda: not km.culler._connecting, "any write on open to finish")
        again.close()
        writes = cluster.request_counter.since(counted)
        assert cluster.request_counter.total(writes, verbs=("patch", "update"),
                                             resource="jupyterkernels") == 0, writes
    finally:
        ws.close()


async def test_opening_a_kernel_the_cron_cannot_cull_before_the_next_pass_writes_nothing(
        make_cluster_gateway: GatewayFactory, kube: KubeClient, cluster: LocalCluster) -> None:
    # Passes an hour apart, so only the open could write; the kernelspec's own idle timeout.
    gw = await make_cluster_gateway("--CullingDefaults.interval=3600")
    km: ElasticMappingKernelManager = gw.kernel_manager
    await kube.create(R.KERNELSPECS, derived_kernelspec("python-cpu", "mirror-2h",
                                                        culling={"idleTimeout": "2h"}))
    assert km._kernelspecs is not None
    await km._kernelspecs.wait_for(lambda o: o is not None, "mirror-2h", timeout=10)
    kernel_id = await km.start_kernel(kernel_name="mirror-2h", user="alice")

    # Just started: even the hour until the next pass leaves it short of its 2h idle timeout.
    counted = cluster.request_counter.snapshot()
    ws = await KernelWS.open(gw.url, kernel_id)
    await wait_until(lambda: km._kernel_connections.get(kernel_id) == 1, "the connection")
    await wait_until(lambda: not km.culler._connecting, "any write on open to finish")
    writes = cluster.request_counter.since(counted)
    assert cluster.request_counter.total(writes, verbs=("patch", "update"),
                                         resource="jupyterkernels") == 0, writes
    ws.close()
    await wait_until(lambda: km._kernel_connections.get(kernel_id) == 0, "the disconnection")

    # Idle for 1h30m by its record: a cron run within the hour could take it, so say it at once.
    stamp = R.format_timestamp(datetime.now(timezone.utc) - timedelta(minutes=90))
    await kube.patch(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id),
                     {"status": {"lastActivity": stamp}}, subresource="status")
    await recorded(km, kernel_id, lastActivity=stamp)
    ws = await KernelWS.open(gw.url, kernel_id)
    try:
        await recorded(km, kernel_id, connections=1)
    finally:
        ws.close()


async def test_the_cron_spares_a_connected_kernel_and_culls_it_after_disconnect(
        make_cluster_gateway: GatewayFactory, kube: KubeClient) -> None:
    gw, km, kernel_id = await start(make_cluster_gateway, kube, FAST)
    passes = Passes(km.culler)
    ws = await connect(gw, kernel_id)
    try:
        await recorded(km, kernel_id, connections=1)
        await make_long_idle(kube, km, kernel_id)
        assert await cron(kube) == set()  # five hours idle, but a client is connected
        await passes.wait(2)
        # The long idleness is real: the gateway did not refresh it to keep the kernel alive.
        assert status(km, kernel_id)["lastActivity"] == R.format_timestamp(LONG_AGO)
        assert await cron(kube) == set()
    finally:
        ws.close()
    await recorded(km, kernel_id, connections=0)
    assert await cron(kube) == {kernel_id}
    await wait_until(lambda: kernel_id not in km, "the gateway dropped the culled kernel",
                     timeout=30)


async def test_the_cron_spares_a_busy_kernel_the_gateway_sampled_busy(
        make_cluster_gateway: GatewayFactory, kube: KubeClient) -> None:
    gw, km, kernel_id = await start(make_cluster_gateway, kube, FAST)
    ws = await connect(gw, kernel_id)
    try:
        await ws.start_busy("import time; time.sleep(300)")
    finally:
        ws.close()  # nobody connected: only "busy" protects it now
    await recorded(km, kernel_id, connections=0, executionState="busy")
    await make_long_idle(kube, km, kernel_id)
    assert await cron(kube) == set()
    # Interrupted, the kernel goes idle; the pass records it, and the cron may take it.
    await km.interrupt_kernel(kernel_id)
    await recorded(km, kernel_id, executionState="idle")
    km.get_kernel(kernel_id).last_activity = LONG_AGO  # the interrupt's messages were activity
    await kube.patch(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id),
                     {"status": {"lastActivity": R.format_timestamp(LONG_AGO)}},
                     subresource="status")
    assert await cron(kube) == {kernel_id}


async def test_a_stale_record_is_corrected_to_the_gateways_own_view(
        make_cluster_gateway: GatewayFactory, kube: KubeClient) -> None:
    # As after a restart or an adoption: the record carries a previous holder's view.
    _, km, kernel_id = await start(make_cluster_gateway, kube, FAST)
    await kube.patch(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id),
                     {"status": {"connections": 3, "executionState": "busy"}},
                     subresource="status")
    await recorded(km, kernel_id, connections=0, executionState="idle")


async def test_the_schema_keeps_the_fields_and_refuses_bad_values(
        make_cluster_gateway: GatewayFactory, kube: KubeClient) -> None:
    _, km, kernel_id = await start(make_cluster_gateway, kube, "--CullingDefaults.interval=3600")
    name = R.kernel_object_name(kernel_id)
    for bad in ({"connections": -1}, {"executionState": "sleepy"}):
        with pytest.raises(KubeError) as err:
            await kube.patch(R.JUPYTERKERNELS, name, {"status": bad}, subresource="status")
        assert err.value.status == 422, err.value
    kept = await kube.patch(R.JUPYTERKERNELS, name,
                            {"status": {"connections": 2, "executionState": "busy"}},
                            subresource="status")
    assert (kept["status"]["connections"], kept["status"]["executionState"]) == (2, "busy")
