"""A kernel's pod events and launcher log (issue 17 item 1): the gateway's diagnostics route for
a start that failed (its record and pod already removed) and for a running kernel, owner only,
and the same through a notebook server with the extension.

Real HTTP against gateways in the test's loop on the local cluster (tests/gatewayfixtures.py:
alice, bob, and ops the admin).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import KubeClient

from .conftest import derived_kernelspec
from .gateway.support import api, json_of
from .gateway.test_notebook_server import run_notebook_server
from .statusevents import EventStream
from .gatewayfixtures import (  # noqa: F401 - fixtures
    ALICE_TOKEN,
    BOB_TOKEN,
    OPS_TOKEN,
    GatewayFactory,
    eventually,
    make_users_gateway,
    users_file,
    users_gateway,
)

pytestmark = pytest.mark.timeout(120)

GHOST = "00000000-1111-4222-8333-444444444444"


def diagnostics(kernel_id: str) -> str:
    return f"/api/elastic/kernels/{kernel_id}/diagnostics"


async def test_a_failed_start_keeps_its_events_for_its_owner(
        users_gateway: ElasticGatewayApp, kube: KubeClient, tmp_path: Path) -> None:
    url = users_gateway.url
    await kube.create(R.KERNELSPECS, derived_kernelspec(
        "python-cpu", "broken-image", image="example.org/does-not-exist:1"))

    async def listed() -> bool:
        specs = json_of(await api(url, "GET", "/api/kernelspecs", token=ALICE_TOKEN))
        return "broken-image" in specs["kernelspecs"]

    await eventually(listed, timeout=30)
    stream = await EventStream.open(url.rstrip("/") + "/api/elastic/kernels/stream", ALICE_TOKEN)
    try:
        assert (await stream.next())[0] == "snapshot"
        failed = await api(url, "POST", "/api/kernels", {"name": "broken-image"},
                           token=ALICE_TOKEN)
        assert failed.code == 500, failed.body
        # The stream says a start went away while starting: the extension's cue.
        _, removed = await stream.until(lambda name, _data: name == "removed")
    finally:
        await stream.close()
    assert removed["last_phase"] in ("Pending", "Starting"), removed
    assert removed["kernelspec"] == "broken-image" and removed["ended"] is None
    # The failed start left no kernel behind; its id is in the gateway's LaunchFailed Event.
    assert users_gateway.kernel_manager.list_kernel_ids() == []
    kernel_id = removed["id"]

    found = await api(url, "GET", diagnostics(kernel_id), token=ALICE_TOKEN)
    assert found.code == 200, found.body
    body = json_of(found)
    assert body["kernel_id"] == kernel_id
    # The kubelet's (on the pod) and the gateway's (on the JupyterKernel) both say why.
    pod = f"Pod/{R.kernel_pod_name(kernel_id)}"
    record = f"JupyterKernel/{R.kernel_object_name(kernel_id)}"
    for involved in (pod, record):
        assert any(e["object"] == involved and e["type"] == "Warning"
                   and "does-not-exist" in e["message"] for e in body["events"]), body["events"]
    assert [e["reason"] for e in body["events"] if e["object"] == pod].count("Scheduled") == 1
    assert body["logs"] == []  # its pod is gone with the record

    # Someone else's kernel is one that does not exist; an admin sees it.
    refused = await api(url, "GET", diagnostics(kernel_id), token=BOB_TOKEN)
    absent = await api(url, "GET", diagnostics(GHOST), token=BOB_TOKEN)
    assert refused.code == absent.code == 404
    assert json_of(refused)["message"] == json_of(absent)["message"].replace(GHOST, kernel_id)
    assert (await api(url, "GET", diagnostics(kernel_id), token=OPS_TOKEN)).code == 200
    assert (await api(url, "GET", diagnostics(kernel_id), token=None)).code == 403
    assert (await api(url, "GET", "/api/elastic/kernels/not-a-kernel/diagnostics",
                      token=ALICE_TOKEN)).code == 404

    # Through the notebook server: the same answer, with this server's gateway credentials.
    extension = "--ServerApp.jpserver_extensions=elastic_kernels.notebook=True"
    async for server in run_notebook_server(users_gateway, tmp_path, [extension],
                                            gateway_token=ALICE_TOKEN):
        relayed = await api(server.url, "GET",
                            f"/elastic-kernels/api/kernels/{kernel_id}/diagnostics",
                            token=server.token)
        assert relayed.code == 200, relayed.body
        assert json_of(relayed)["kernel_id"] == kernel_id
        assert json_of(relayed)["events"] == body["events"]
        assert (await api(server.url, "GET",
                          f"/elastic-kernels/api/kernels/{GHOST}/diagnostics",
                          token=server.token)).code == 404


async def test_a_running_kernel_shows_its_launcher_log(users_gateway: ElasticGatewayApp) -> None:
    url = users_gateway.url
    started = await api(url, "POST", "/api/kernels", {"name": "python-cpu"}, token=ALICE_TOKEN)
    assert started.code == 201, started.body
    kernel_id = json_of(started)["id"]
    found = await api(url, "GET", diagnostics(kernel_id), token=ALICE_TOKEN)
    assert found.code == 200, found.body
    body = json_of(found)
    (log,) = body["logs"]
    assert log["pod"] == R.kernel_pod_name(kernel_id) and log["error"] is None
    assert log["lines"], "the launcher logs its start"
    assert any(e["reason"] == "Scheduled" for e in body["events"]), body["events"]
    assert (await api(url, "GET", diagnostics(kernel_id), token=BOB_TOKEN)).code == 404


async def test_an_idle_cull_is_told_with_its_reason(make_users_gateway: GatewayFactory,
                                                    kube: KubeClient) -> None:
    """The culler writes its reason, then the shutdown overwrites it before the record goes:
    the stream's note after the fact still says the kernel was culled for being idle."""
    gateway = await make_users_gateway("--CullingDefaults.interval=0.3")
    url = gateway.url
    brief = derived_kernelspec("python-cpu", "python-brief")
    brief["spec"]["culling"] = {"idleTimeout": "2s"}
    await kube.create(R.KERNELSPECS, brief)

    async def listed() -> bool:
        specs = json_of(await api(url, "GET", "/api/kernelspecs", token=ALICE_TOKEN))
        return "python-brief" in specs["kernelspecs"]

    await eventually(listed, timeout=30)
    started = await api(url, "POST", "/api/kernels", {"name": "python-brief"},
                        token=ALICE_TOKEN)
    assert started.code == 201, started.body
    kernel_id = json_of(started)["id"]

    async def culled() -> list[dict[str, str]]:
        view = json_of(await api(url, "GET", "/api/elastic/kernels", token=ALICE_TOKEN))
        return [c for c in view["overview"]["culls"] if c["kernel_id"] == kernel_id]

    (note,) = await eventually(culled, timeout=60)
    assert note["reason"] == "IdleTimeout", note
    assert re.fullmatch(r"shut down after \d+s idle", note["summary"]), note
    bob = json_of(await api(url, "GET", "/api/elastic/kernels", token=BOB_TOKEN))
    assert bob["overview"]["culls"] == []  # someone else's cull is not bob's news
