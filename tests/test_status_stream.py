"""Each user's kernel status, live (issue 17): the gateway's one-shot JSON, its event stream and
keepalive, and the same stream through a notebook server with the extension.

Gateways run in-process on the local cluster with the users file of tests/gatewayfixtures.py
(alice, bob, and ops the admin). Every wait is for an event from the gateway, never a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from elastic_kernels import testing
from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.gateway.web.statusstream import Subscriber
from elastic_kernels.localcluster.cluster import LocalCluster

from .conftest import running_cluster
from .gateway.support import api, json_of
from .gateway.test_notebook_server import run_notebook_server
from .gatewayfixtures import (  # noqa: F401 - fixtures
    ADMIN_TOKEN,
    ALICE_TOKEN,
    BOB_TOKEN,
    OPS_TOKEN,
    GatewayFactory,
    make_users_gateway,
    users_file,
    users_gateway,
)
from .statusevents import EventStream, kernel_event

pytestmark = pytest.mark.timeout(120)

STREAM = "api/elastic/kernels/stream"


async def start(url: str, token: str, name: str = "python-cpu") -> str:
    response = await testing.api(url, "POST", "/api/kernels", {"name": name}, token=token,
                                 timeout=110)
    assert response.code == 201, response.body
    return str(json_of(response)["id"])


async def status(url: str, token: str) -> dict[str, Any]:
    response = await api(url, "GET", "/api/elastic/kernels", token=token)
    assert response.code == 200, response.body
    return dict(json_of(response))


def ids(view: dict[str, Any]) -> set[str]:
    return {k["id"] for k in view["kernels"]}


@pytest_asyncio.fixture
async def streams() -> AsyncIterator[list[EventStream]]:
    """Streams a test opens (append them); all closed at the end."""
    opened: list[EventStream] = []
    try:
        yield opened
    finally:
        for stream in opened:
            await stream.close()


async def open_stream(opened: list[EventStream], base: str, token: str,
                      path: str = STREAM) -> tuple[EventStream, dict[str, Any]]:
    stream = await EventStream.open(base.rstrip("/") + "/" + path, token)
    opened.append(stream)
    name, snapshot = await stream.next()
    assert name == "snapshot", (name, snapshot)
    assert stream.content_type.startswith("text/event-stream")
    return stream, snapshot


async def test_each_user_sees_their_own_kernels(users_gateway: ElasticGatewayApp,
                                                streams: list[EventStream]) -> None:
    url = users_gateway.url
    a1 = await start(url, ALICE_TOKEN)
    b1 = await start(url, BOB_TOKEN)

    # One shot: alice hers, bob his, an admin all.
    assert ids(await status(url, ALICE_TOKEN)) == {a1}
    assert ids(await status(url, BOB_TOKEN)) == {b1}
    admin = await status(url, OPS_TOKEN)
    assert ids(admin) == {a1, b1} and admin["admin"] is True
    assert (await api(url, "GET", "/api/elastic/kernels", token=None)).code == 403

    alice, snap_a = await open_stream(streams, url, ALICE_TOKEN)
    bob, snap_b = await open_stream(streams, url, BOB_TOKEN)
    ops, snap_o = await open_stream(streams, url, OPS_TOKEN)
    assert ids(snap_a) == {a1} and ids(snap_b) == {b1} and ids(snap_o) == {a1, b1}
    assert snap_a["user"] == "alice" and snap_a["admin"] is False

    # A CPU kernel with no notebook connected: its idle deadline is the kernelspec's 4h away.
    (model,) = snap_a["kernels"]
    assert model["user"] == "alice" and model["kernelspec"] == "python-cpu"
    assert model["phase"] == "Running" and model["state"].startswith("running")
    assert model["resources"]["summary"].startswith("250m CPU, 512Mi memory on ")
    cull = model["cull"]
    assert cull["idle_timeout"] == 4 * 3600 and cull["on_cull"] == "Delete"
    assert cull["saved"] is False and cull["protected"] is None
    deadline = datetime.fromisoformat(cull["idle_deadline"].replace("Z", "+00:00"))
    since = datetime.fromisoformat(cull["idle_since"].replace("Z", "+00:00"))
    assert (deadline - since).total_seconds() == 4 * 3600

    # A new kernel of alice's arrives on her stream and the admin's, not on bob's.
    a2 = await start(url, ALICE_TOKEN)
    await alice.until(kernel_event(a2, lambda m: m["phase"] == "Running"))
    await ops.until(kernel_event(a2, lambda m: m["phase"] == "Running"))
    b2 = await start(url, BOB_TOKEN)
    before: list[Any] = []
    await bob.until(kernel_event(b2, lambda m: m["phase"] == "Running"), seen=before)
    assert all(data.get("id") != a2 for _name, data in before), before
    assert all(data.get("user") in (None, "bob") for name, data in before if name == "kernel")

    # Keepalive by the owner moves the deadline, on the stream too; by anyone else it is 404
    # exactly as for a kernel that does not exist.
    kept = await api(url, "POST", f"/api/elastic/kernels/{a1}/keepalive", token=ALICE_TOKEN)
    assert kept.code == 200, kept.body
    moved = json_of(kept)["kernel"]["cull"]
    assert moved["idle_deadline"] > cull["idle_deadline"], (moved, cull)
    await alice.until(kernel_event(a1, lambda m: m["cull"]["idle_deadline"] ==
                                   moved["idle_deadline"]))
    ghost = "00000000-1111-4222-8333-444444444444"
    for token in (BOB_TOKEN,):
        refused = await api(url, "POST", f"/api/elastic/kernels/{a1}/keepalive", token=token)
        absent = await api(url, "POST", f"/api/elastic/kernels/{ghost}/keepalive", token=token)
        assert refused.code == absent.code == 404
        assert json_of(refused)["message"] == json_of(absent)["message"].replace(ghost, a1)
    assert (await api(url, "POST", f"/api/elastic/kernels/{a1}/keepalive",
                      token=OPS_TOKEN)).code == 200  # admins act on anyone's kernel

    # Shut down: the stream says it is gone.
    assert (await api(url, "DELETE", f"/api/kernels/{a2}", token=ALICE_TOKEN)).code == 204
    await alice.until(lambda name, data: name == "removed" and data["id"] == a2)


# --- the GPU queue -------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """One node with one simulated GPU: a second GPU kernel has to queue."""
    async with running_cluster(tmp_path, nodes=1, gpus_per_node=1,
                               crash_backoff_seconds=None) as c:
        yield c


async def test_queued_gpu_start_is_streamed(users_gateway: ElasticGatewayApp,
                                            streams: list[EventStream]) -> None:
    url = users_gateway.url
    holder = await start(url, ALICE_TOKEN, "python-gpu")
    view = await status(url, ALICE_TOKEN)
    (held,) = view["kernels"]
    assert held["resources"]["summary"] == f"1 × nvidia.com/gpu on {held['node']}"
    assert held["cull"]["on_cull"] == "Suspend" and held["cull"]["reclaim_after"] == 600
    assert held["cull"]["reclaimable_at"] is not None

    bob, _ = await open_stream(streams, url, BOB_TOKEN)
    ops, snap = await open_stream(streams, url, OPS_TOKEN)
    assert [n["gpus_held"] for n in snap["overview"]["nodes"]] == [1]
    waiting = asyncio.ensure_future(start(url, BOB_TOKEN, "python-gpu"))
    try:
        _, queued = await bob.until(lambda name, data: name == "kernel"
                                    and data["queue_position"] == 1)
        assert queued["user"] == "bob" and queued["phase"] in ("Pending", "Starting")
        assert queued["state"] == "waiting for 1 nvidia.com/gpu: 1st in queue", queued
        await ops.until(lambda name, data: name == "overview" and any(
            w["kernel_id"] == queued["id"] for w in data["gpu_queue"]))
        # The GPU frees up: the same stream says the kernel got it and runs.
        assert (await api(url, "DELETE", f"/api/kernels/{holder}",
                          token=ALICE_TOKEN)).code == 204
        _, running = await bob.until(kernel_event(queued["id"],
                                                  lambda m: m["phase"] == "Running"))
        assert running["queue_position"] is None
        assert running["resources"]["summary"].startswith("1 × nvidia.com/gpu on ")
        assert await waiting == queued["id"]
    finally:
        if not waiting.done():
            waiting.cancel()


# --- through a notebook server ---------------------------------------------------------------


async def test_stream_through_the_notebook_server(users_gateway: ElasticGatewayApp,
                                                  tmp_path: Path,
                                                  streams: list[EventStream]) -> None:
    url = users_gateway.url
    mine = await start(url, ALICE_TOKEN)
    theirs = await start(url, BOB_TOKEN)
    extension = "--ServerApp.jpserver_extensions=elastic_kernels.notebook=True"
    async for server in run_notebook_server(users_gateway, tmp_path, [extension],
                                            gateway_token=ALICE_TOKEN):
        base = server.url
        once = await api(base, "GET", "/elastic-kernels/api/status", token=server.token)
        assert once.code == 200, once.body
        assert ids(json_of(once)) == {mine}
        # The notebook server's own auth guards the routes.
        assert (await api(base, "GET", "/elastic-kernels/api/status", token=None)).code == 403

        stream, snap = await open_stream(streams, base, server.token, "elastic-kernels/api/stream")
        assert ids(snap) == {mine} and theirs not in ids(snap)
        started = await api(base, "POST", "/api/kernels", {"name": "python-cpu"},
                            token=server.token)
        assert started.code == 201, started.body
        new = json_of(started)["id"]
        await stream.until(kernel_event(new, lambda m: m["phase"] == "Running"))

        kept = await api(base, "POST", f"/elastic-kernels/api/kernels/{new}/keepalive",
                         token=server.token)
        assert kept.code == 200, kept.body
        refused = await api(base, "POST", f"/elastic-kernels/api/kernels/{theirs}/keepalive",
                            token=server.token)
        assert refused.code == 404
        await stream.close()


# --- a slow reader -------------------------------------------------------------------------------


async def test_a_reader_that_does_not_keep_up_is_dropped() -> None:
    """Each stream's queue is bounded: past it the stream ends (the client reconnects and gets
    a fresh snapshot) instead of the gateway holding its backlog."""
    sub = Subscriber("alice", admin=False, limit=2)
    sub.push("kernel", {"id": "1"})
    sub.push("kernel", {"id": "2"})
    assert not sub.ended.is_set()
    sub.push("kernel", {"id": "3"})
    assert sub.dropped and sub.ended.is_set()
    assert sub.may_see("alice") and not sub.may_see("bob")
