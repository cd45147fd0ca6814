"""The Kubernetes API server goes away and comes back; the gateway's kernels don't notice.

While the local cluster's API server is down (its port refuses connections, the kubelet and the
pods keep running):

* kernels keep executing: ZeroMQ goes straight to the pods;
* a kernel start fails at once with 503 and says why, instead of hanging;
* every watch keeps retrying with back-off (each records several failed attempts);
* the cluster moves on without the gateway: objects change and a kernel's pod is deleted, so
  much that the watches' resume points fall out of the (deliberately tiny) event window.

When it is back, the watches resume, get 410 Gone and relist, and the relist reports the pod
deleted during the outage, which the gateway restarts. Starting, listing and culling work, and
no kernel is lost or duplicated.

Why not 30 seconds of outage, as the issue puts it: nothing in the gateway measures the length
of an outage. A longer one only repeats the same failed attempt at the back-off cap
(``Informer.max_backoff_seconds``, 10 s), and the attempt after recovery no longer waits out
that back-off because the first request that gets through wakes every watch. This test waits for
the events that matter instead of a duration: several failed attempts per watch, and a resume
point out of the window, so a 30 s outage would exercise no other code.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path
import typing as t
from typing import Any
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from tornado.httpclient import HTTPClientError

from elastic_kernels import cull
from elastic_kernels.culling import actions as A
from elastic_kernels.culling import policy as C
from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import PODS, SECRETS, KubeClient, KubeError
from elastic_kernels.kube.connection import ClusterConnection
from elastic_kernels.kube.informer import Informer
from elastic_kernels.localcluster.cluster import LocalCluster
from elastic_kernels.localcluster.store import Store

from .conftest import GatewayFactory, derived_kernelspec, running_cluster
from .gateway.support import KernelWS, api, json_of
from .gatewayproc import wait_until

pytestmark = pytest.mark.timeout(90)

STORE_PODS = ("", "pods")
STORE_KERNELS = (R.GROUP, R.KERNEL_PLURAL)
#: Events of a kind the local API server keeps for resuming watches (a real one keeps minutes).
WINDOW = 20


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """The shared cluster fixture, with a small watch window, so that an outage can outlast it."""
    async with running_cluster(tmp_path, store=Store(watch_window=WINDOW)) as c:
        yield c


@pytest_asyncio.fixture
async def gateway(cluster: LocalCluster, kube: KubeClient,
                  make_cluster_gateway: GatewayFactory) -> AsyncIterator[ElasticGatewayApp]:
    await kube.create(R.KERNELSPECS, derived_kernelspec(
        "python-cpu", "python-cpu-short", culling={"idleTimeout": "10m"}))
    app = await make_cluster_gateway()
    try:
        yield app
    finally:
        # Before make_cluster_gateway stops the gateway: a failed test must not leave the API down.
        if cluster.apiserver is not None and cluster.apiserver._server is None:
            await cluster.start_apiserver()


async def start(gateway: ElasticGatewayApp, name: str = "python-cpu") -> str:
    response = await api(gateway.url, "POST", "/api/kernels", {"name": name})
    assert response.code == 201, response.body
    return str(json_of(response)["id"])


async def listed(gateway: ElasticGatewayApp) -> dict[str, dict[str, Any]]:
    response = await api(gateway.url, "GET", "/api/kernels")
    assert response.code == 200, response.body
    return {k["id"]: k for k in json_of(response)}


async def test_kernels_outlive_an_api_server_outage(
        cluster: LocalCluster, kube: KubeClient, gateway: ElasticGatewayApp) -> None:
    kept, doomed, idle = await asyncio.gather(
        start(gateway), start(gateway), start(gateway, "python-cpu-short"))
    informers: list[Informer] = ClusterConnection.instance().informers()
    ws = await KernelWS.open(gateway.url, kept)
    try:
        assert (await ws.execute("counter = 0"))["reply"]["status"] == "ok"
        failures = {id(i): i.stats.errors for i in informers}
        lists = {id(i): i.stats.lists for i in informers}

        await cluster.stop_apiserver()

        # Running kernels carry on: ZeroMQ goes straight to their pods.
        for _ in range(3):
            result = await ws.execute("counter += 1; print(counter)")
            assert result["reply"]["status"] == "ok", result
        assert result["stdout"] == "3\n"

        # A start fails at once, saying why.
        loop = asyncio.get_running_loop()
        asked = loop.time()
        refused = await api(gateway.url, "POST", "/api/kernels", {"name": "python-cpu"})
        print(f"\nstart during the outage: {refused.code} after "
              f"{1000 * (loop.time() - asked):.0f} ms")
        assert refused.code == 503, refused.body
        body = json_of(refused)
        assert body["reason"] == "ClusterUnavailable"
        assert "Kubernetes API" in body["message"], body

        # The cluster moves on: a kernel's pod goes, and objects of every watched kind change
        # more often than the watch window holds, so the watches cannot resume where they were.
        cluster.store.delete(STORE_PODS, "default", R.kernel_pod_name(doomed),
                             grace_period_seconds=0)
        busy = [(STORE_PODS, R.kernel_pod_name(kept)), (STORE_KERNELS, R.kernel_object_name(idle))]
        busy += [((kind.group, kind.plural), kind_objects[0]["metadata"]["name"])
                 for kind in (R.KERNELSPECS, R.TEMPLATES)
                 for kind_objects in [cluster.store.list((kind.group, kind.plural), "default")[0]]]
        # The shared watch of the kubelet's Pulling events (provisioner/pullprogress.py) too.
        cluster.store.create(("", "events"), "default", {
            "metadata": {"name": "outage-pull"}, "reason": "Pulling", "type": "Normal",
            "message": 'Pulling image "x"', "source": {"component": "kubelet"},
            "involvedObject": {"kind": "Pod", "namespace": "default", "name": "elsewhere"}})
        busy.append((("", "events"), "outage-pull"))
        for n in range(WINDOW + 1):
            for key, name in busy:
                cluster.store.patch(key, "default", name,
                                    {"metadata": {"annotations": {"test/outage": str(n)}}},
                                    "merge")

        # Every watch keeps trying, backing off.
        await wait_until(lambda: all(i.stats.errors >= failures[id(i)] + 3 for i in informers),
                         "every watch failed three times", timeout=30, interval=0.02)
        assert gateway.kernel_manager.list_kernel_ids()  # nothing forgotten meanwhile
        assert (await ws.execute("print(counter)"))["stdout"] == "3\n"

        await cluster.start_apiserver()
        back = loop.time()

        # The watches resume, find their resume point gone (410) and relist.
        await wait_until(lambda: all(i.stats.lists > lists[id(i)] and i.stats.connected
                                for i in informers),
                         lambda: f"every watch relisted: {[(i, i.stats) for i in informers]}",
                         timeout=30, interval=0.02)
        print(f"every watch relisted {1000 * (loop.time() - back):.0f} ms after the API "
              "server came back")
        # The relist reported the pod deleted during the outage: that kernel was restarted.
        record = R.kernel_object_name(doomed)
        records = await ClusterConnection.instance().informer(R.JUPYTERKERNELS)
        await records.wait_for(
            lambda r: r is not None and (r.get("status") or {}).get("restartCount") == 1
            and r["status"].get("phase") == "Running", record, timeout=40)
    finally:
        ws.close()

    # Starting works again, and so does listing: every kernel once, none lost.
    fresh = await start(gateway)
    assert set(await listed(gateway)) == {kept, doomed, idle, fresh}
    ws = await KernelWS.open(gateway.url, kept)
    try:
        assert (await ws.execute("print(counter)"))["stdout"] == "3\n"
    finally:
        ws.close()

    # Culling works: the cull job removes the idle kernel (its 10m idle timeout is past an hour
    # from now) and the gateway lets it go.
    report = await cull.run_cull(kube, "default", C.Policy(), orphan_grace=86400,
                                 activity_slack=0,
                                 now=datetime.now(timezone.utc) + timedelta(hours=1))
    culled = {r.decision.kernel.kernel_id for r in report.results
              if r.outcome is A.CullOutcome.DELETED}
    assert culled == {idle}, report.results
    await wait_until(lambda: idle not in gateway.kernel_manager,
                     "the gateway dropped the culled kernel", timeout=30, interval=0.02)
    assert set(await listed(gateway)) == {kept, doomed, fresh}

    # Nothing duplicated: one record and one pod per kernel (the restarted one on its second).
    records_now = (await kube.list(R.JUPYTERKERNELS))["items"]
    assert sorted(r["spec"]["kernelId"] for r in records_now) == sorted([kept, doomed, fresh])
    pods = [p["metadata"]["name"] for p in (await kube.list(
        PODS, label_selector=R.KERNEL_POD_SELECTOR))["items"]
        if not p["metadata"].get("deletionTimestamp")]
    assert sorted(pods) == sorted([R.kernel_pod_name(kept), R.kernel_pod_name(doomed, 1),
                                   R.kernel_pod_name(fresh)])


async def test_an_api_error_while_taking_on_a_kernel_is_a_503_not_a_404(
        gateway: ElasticGatewayApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel this gateway does not hold yet (another replica's, or the previous gateway's)
    whose key cannot be read because the API answers with an error (a real server's etcd
    timeout; the local one has no such fault, so the client's answer is replaced) is a 503 the
    client retries, not a 404 it would believe; once the API answers, the kernel is taken on."""
    kernel_id = await start(gateway)
    km: t.Any = gateway.kernel_manager
    await km.detach_all()  # as if another gateway held it
    assert kernel_id not in km
    client = ClusterConnection.instance().client
    real_get = client.get

    async def failing_get(resource: t.Any, name: str, *args: t.Any, **kwargs: t.Any) -> t.Any:
        if resource == SECRETS:
            raise KubeError(500, "InternalError", "etcdserver: request timed out")
        return await real_get(resource, name, *args, **kwargs)

    with monkeypatch.context() as during:
        during.setattr(client, "get", failing_get)
        with pytest.raises(HTTPClientError) as failed:
            await KernelWS.open(gateway.url, kernel_id)
    assert failed.value.code == 503
    ws = await KernelWS.open(gateway.url, kernel_id)
    try:
        assert (await ws.execute("print(6 * 7)"))["stdout"] == "42\n"
    finally:
        ws.close()


async def test_a_request_while_the_kernel_is_being_taken_on_waits_for_it(
        gateway: ElasticGatewayApp) -> None:
    """A gateway serves while it re-attaches its namespace's kernels at startup. A request for
    a kernel being attached right then (jupyter_server lists it as a pending start meanwhile)
    waits for that attempt and gets the kernel, not a 404 (a clean-clone run saw the
    replacement gateway pod answer a websocket 404 during its startup adoption)."""
    kernel_id = await start(gateway)
    km: t.Any = gateway.kernel_manager
    await km.detach_all()
    hydrator = km.hydrator
    real_attach = hydrator.attach
    attaching = asyncio.Event()

    async def attach_slowly(*args: t.Any) -> t.Any:
        started = asyncio.ensure_future(real_attach(*args))
        while hydrator.pending_start(kernel_id) is None and not started.done():
            await asyncio.sleep(0)
        attaching.set()  # the kernel is a pending start now
        await asyncio.sleep(0.2)  # and stays one while the second request comes
        return await started

    hydrator.attach = attach_slowly
    try:
        first = asyncio.ensure_future(km.hydrate_kernel(kernel_id))
        await asyncio.wait_for(attaching.wait(), 30)
        assert await km.hydrate_kernel(kernel_id), "the second request joined the first"
        assert await first
    finally:
        hydrator.attach = real_attach
    ws = await KernelWS.open(gateway.url, kernel_id)
    try:
        assert (await ws.execute("print(6 * 7)"))["stdout"] == "42\n"
    finally:
        ws.close()
