"""Identity from JupyterHub, end to end with a real hub (issue 14, item 1).

A real ``jupyterhub`` process (tests/hubsupport.py) spawns alice's and bob's single-user servers
with ``--gateway-url`` and their own hub tokens as gateway tokens; the gateway (on the local
cluster) asks the hub who each token belongs to. Every kernel is started, listed, attached to and
stopped through the users' own servers, as JupyterLab would.
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
from tornado.httpclient import HTTPClientError

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.gateway.lifecycle.kernelmanager import ElasticMappingKernelManager
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import KubeClient
from elastic_kernels.localcluster.cluster import LocalCluster
from elastic_kernels.testing import KernelWS, api, json_of

from .conftest import GatewayFactory, apply_files, running_cluster
from .gatewayproc import eventually, wait_until
from .hubsupport import ADMIN_GROUP, HubProcess, user_of
from .test_user_volumes import example

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ADMIN_TOKEN = "hub-tests-admin-token-0123456789"


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """One node with two GPUs: two GPU kernels run, the third waits in the fair queue."""
    async with running_cluster(tmp_path, nodes=1, gpus_per_node=2) as c:
        yield c


async def hub_and_gateway(make_cluster_gateway: GatewayFactory, tmp_path: Path,
                          *argv: str) -> tuple[HubProcess, ElasticGatewayApp]:
    """A gateway that asks the hub, and the hub whose servers use it; the caller stops the hub."""
    hub = HubProcess(tmp_path / "hub", gateway_url="")
    gateway = await make_cluster_gateway(
        f"--ElasticIdentityProvider.hub_api_url={hub.api_url}",
        f"--ElasticIdentityProvider.hub_admin_groups={ADMIN_GROUP}",
        "--ElasticIdentityProvider.hub_cache_seconds=2",
        *argv, token=ADMIN_TOKEN)
    hub.gateway_url = gateway.url.rstrip("/")
    return hub, gateway


async def install_home_template(cluster: LocalCluster, tmp_path: Path, hub: HubProcess) -> None:
    """The shipped GPU template with each user's hub home as their user volume (hostPath on the
    local cluster; a claim-{username} PVC in a real cluster), seen by the kernel at
    /home/jovyan and by the user's server at its home directory."""
    doc = example("gpu")
    doc.pop("status", None)
    doc["metadata"] = {"name": "gpu"}
    doc["spec"]["userVolumes"] = [{
        "name": "home",
        "volume": {"hostPath": {"path": f"{hub.workdir}/home/{{username}}"}},
        "mountPath": "/home/jovyan",
        "notebookPath": f"{hub.workdir}/home/{{username}}",
    }]
    path = tmp_path / "gpu-home.json"
    path.write_text(json.dumps(doc))
    await apply_files(cluster.kubeconfig_path, [path])


async def start_via(server: str, token: str, name: str = "python-gpu",
                    path: str | None = None) -> dict[str, Any]:
    """Start a kernel through a user's server (a session for ``path``, else a bare kernel)."""
    if path is None:
        response = await api(server, "POST", "/api/kernels", {"name": name}, token=token,
                             timeout=300)
        assert response.code == 201, response.body
        return dict(json_of(response))
    response = await api(server, "POST", "/api/sessions", {
        "path": path, "type": "notebook", "name": path, "kernel": {"name": name}},
        token=token, timeout=300)
    assert response.code == 201, response.body
    return dict(json_of(response)["kernel"])


async def run(server: str, token: str, kernel_id: str, code: str) -> str:
    ws = await KernelWS.open(server, kernel_id, token)
    try:
        result = await ws.execute(code, timeout=60)
    finally:
        ws.close()
    return str(result["stdout"])


async def gateway_user(gateway: ElasticGatewayApp, token: str) -> tuple[int, Any]:
    """Start a CPU kernel on the gateway with ``token``: (HTTP code, owner or body)."""
    response = await api(gateway.url, "POST", "/api/kernels", {"name": "python-cpu"},
                         token=token)
    if response.code != 201:
        return response.code, response.body
    model = json_of(response)
    await api(gateway.url, "DELETE", f"/api/kernels/{model['id']}", token=ADMIN_TOKEN)
    return 201, user_of(model)


async def test_hub_tokens_name_users_and_admins(
        make_cluster_gateway: GatewayFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    hub, gateway = await hub_and_gateway(make_cluster_gateway, tmp_path)
    try:
        await hub.start()
        alice = await hub.token("alice")
        assert await gateway_user(gateway, alice) == (201, "alice")
        # A token without the gateway's access scope is no key to the user's kernels.
        narrow = await hub.token("alice", scopes=["read:users:activity!user"])
        code, _ = await gateway_user(gateway, narrow)
        assert code == 403
        # A service's token names no user.
        code, _ = await gateway_user(gateway, hub.service_token)
        assert code == 403
        code, _ = await gateway_user(gateway, "not-a-hub-token-0123456789abcdef")
        assert code == 403

        # Admins: the hub's admin flag and the configured group; plain users are not.
        ops, carol, bob = [await hub.token(u) for u in ("ops", "carol", "bob")]
        listed = {}
        a_kernel = json_of(await api(gateway.url, "POST", "/api/kernels",
                                     {"name": "python-cpu"}, token=alice))
        for name, token in (("ops", ops), ("carol", carol), ("bob", bob)):
            response = await api(gateway.url, "GET", "/api/kernels", token=token)
            listed[name] = {k["id"] for k in json_of(response)}
        assert a_kernel["id"] in listed["ops"] and a_kernel["id"] in listed["carol"]
        assert a_kernel["id"] not in listed["bob"]

        # A token the hub revoked stops working once the brief cache expires.
        tokens = await hub.request("GET", "/users/alice/tokens")
        for model in tokens["api_tokens"]:
            await hub.request("DELETE", f"/users/alice/tokens/{model['id']}")

        async def refused() -> bool:
            response = await api(gateway.url, "GET", "/api/kernels", token=alice)
            return response.code == 403
        await eventually(refused, timeout=30)
        # The users' own tokens and the gateway's service token never reach a log line.
        text = "\n".join(r.getMessage() for r in caplog.records)
        for secret in (alice, bob, ops, carol, narrow, hub.service_token):
            assert secret not in text
    finally:
        await hub.stop()


async def test_single_user_servers_are_their_users(
        cluster: LocalCluster, make_cluster_gateway: GatewayFactory, kube: KubeClient,
        tmp_path: Path) -> None:
    hub, gateway = await hub_and_gateway(make_cluster_gateway, tmp_path)
    try:
        await install_home_template(cluster, tmp_path, hub)
        await hub.start()
        (hub.home("alice") / "project").mkdir()
        (hub.home("alice") / "project" / "data.txt").write_text("alice's data")
        alice_server, bob_server = [await hub.start_server(u) for u in ("alice", "bob")]
        alice, bob = await hub.token("alice", ["access:servers!user=alice"]), \
            await hub.token("bob", ["access:servers!user=bob"])

        # Each starts "Python on GPU" through their own server; each kernel is its user's.
        a = await start_via(alice_server, alice, path="project/analysis.ipynb")
        b = await start_via(bob_server, bob)
        for kernel, user in ((a, "alice"), (b, "bob")):
            record = await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(kernel["id"]))
            assert record["spec"]["user"] == user and record["status"]["gpus"] == 1
        # The notebook's folder in alice's volume is the kernel's working directory.
        assert await run(alice_server, alice, a["id"],
                         "print(open('data.txt').read())") == "alice's data\n"

        # Bob's server cannot see, attach to or stop alice's kernel.
        listed = json_of(await api(bob_server, "GET", "/api/kernels", token=bob))
        assert [k["id"] for k in listed] == [b["id"]]
        assert (await api(bob_server, "GET", f"/api/kernels/{a['id']}", token=bob)).code == 404
        with pytest.raises(HTTPClientError):
            await KernelWS.open(bob_server, a["id"], bob)
        response = await api(bob_server, "DELETE", f"/api/kernels/{a['id']}", token=bob)
        assert response.code == 404
        assert await run(alice_server, alice, a["id"], "print('still here')") == "still here\n"
        assert (await api(alice_server, "DELETE", f"/api/kernels/{a['id']}",
                          token=alice)).code == 204
    finally:
        await hub.stop()


async def test_fair_queue_and_quotas_are_per_hub_user(
        make_cluster_gateway: GatewayFactory, tmp_path: Path) -> None:
    hub, gateway = await hub_and_gateway(
        make_cluster_gateway, tmp_path,
        "--ElasticMappingKernelManager.gpu_quota_per_user=4")
    km: ElasticMappingKernelManager = gateway.kernel_manager
    starts: dict[str, asyncio.Future[dict[str, Any]]] = {}
    try:
        await hub.start()
        alice_server, bob_server = [await hub.start_server(u) for u in ("alice", "bob")]
        alice, bob = await hub.token("alice", ["access:servers!user=alice"]), \
            await hub.token("bob", ["access:servers!user=bob"])

        held = [await start_via(alice_server, alice) for _ in range(2)]  # both GPUs
        for count, name in enumerate(("a3", "a4"), 1):
            starts[name] = asyncio.ensure_future(start_via(alice_server, alice))
            await wait_until(lambda n=count: len(km.gpu_queue.snapshot()) == n, timeout=60)
        starts["b1"] = asyncio.ensure_future(start_via(bob_server, bob))
        await wait_until(lambda: len(km.gpu_queue.snapshot()) == 3, timeout=60)
        assert [w["user"] for w in km.gpu_queue.snapshot()] == ["alice", "bob", "alice"]

        # The quota counts alice's GPUs (2 held, 2 waiting), not bob's.
        response = await api(alice_server, "POST", "/api/kernels", {"name": "python-gpu"},
                             token=alice, timeout=60)
        assert response.code == 403 and b"GPU quota exceeded" in response.body, response.body

        # Free a GPU: alice's first waiting start runs; free the next: bob's, not alice's.
        await api(alice_server, "DELETE", f"/api/kernels/{held[0]['id']}", token=alice)
        done, _ = await asyncio.wait([starts["a3"], starts["b1"], starts["a4"]],
                                     return_when=asyncio.FIRST_COMPLETED)
        first = done.pop().result()
        assert km.elastic_model(first["id"])["user"] == "alice"
        await api(alice_server, "DELETE", f"/api/kernels/{held[1]['id']}", token=alice)
        second = await asyncio.wait_for(starts["b1"], 120)
        assert km.elastic_model(second["id"])["user"] == "bob"
        assert not (starts["a3"].done() and starts["a4"].done())
    finally:
        for fut in starts.values():
            if not fut.done():
                fut.cancel()
        await asyncio.gather(*starts.values(), return_exceptions=True)
        await hub.stop()
