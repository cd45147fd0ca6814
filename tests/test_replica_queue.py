"""One fair GPU queue across two gateway replicas behind one port (issue 14).

Two gateway processes share a local cluster with one simulated GPU; a small round-robin TCP
proxy on 127.0.0.1 stands in for the Service in front of them. A holder takes the GPU; alice and
bob then queue GPU starts through the proxy and directly at each replica. Both replicas list the
same queue with the same positions; the GPU goes round robin across users in the one global
order, whichever replica took each start; only one replica (the queue's Lease holder) lifts
gates; and ownership and, once each replica has been asked for a kernel, the listing are the
same from either replica. Every wait is on observable state; every process is stopped at the
end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from elastic_kernels import testing
from elastic_kernels.kube import resources as R
from elastic_kernels.gateway.lifecycle.queueboard import LEADER_LEASE
from elastic_kernels.kube.client import LEASES, KubeClient
from elastic_kernels.localcluster.cluster import LocalCluster

from .conftest import derived_kernelspec, running_cluster
from .gateway.support import TOKEN, json_of
from .gatewayfixtures import ALICE_TOKEN, BOB_TOKEN, users_file  # noqa: F401 (a fixture)
from .gatewayproc import GatewayProcess, Gateways, eventually

pytestmark = pytest.mark.timeout(420)

SPEC = "gpu-queue-fair"
TOKENS = {"alice": ALICE_TOKEN, "bob": BOB_TOKEN}


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """One node with one simulated GPU."""
    async with running_cluster(tmp_path, nodes=1, gpus_per_node=1,
                               crash_backoff_seconds=None) as c:
        yield c


@pytest.fixture
def gateway_process_args(users_file: Path) -> tuple[str, ...]:  # noqa: F811
    return (f"--users-file={users_file}",)


class RoundRobinProxy:
    """A TCP proxy on 127.0.0.1: each new connection goes to the next backend in turn (so HTTP
    requests and websockets alike, one connection each)."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = [re.match(r"http://([\d.]+):(\d+)/", b).groups()  # type: ignore[union-attr]
                         for b in backends]
        self._next = itertools.cycle(range(len(backends)))
        self.routed: list[int] = []
        self._server: asyncio.AbstractServer | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = next(self._next)
        self.routed.append(index)
        host, port = self.backends[index]
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        pipes = [asyncio.ensure_future(self._pipe(reader, up_writer)),
                 asyncio.ensure_future(self._pipe(up_reader, writer))]
        self._pipes.update(pipes)
        try:
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._pipes.difference_update(pipes)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


async def call(url: str, method: str, path: str, body: Any = None, *, token: str = TOKEN,
               timeout: float = 30) -> Any:
    return await testing.api(url, method, path, body, token=token, timeout=timeout)


async def queue_of(url: str, token: str = TOKEN) -> list[dict[str, Any]]:
    response = await call(url, "GET", "/api/elastic/status", token=token)
    assert response.code == 200, response.body
    return list(json_of(response)["gpu_queue"])


async def start(url: str, user: str) -> str:
    """A start that returns once the kernel runs (it waits in the queue until then)."""
    response = await call(url, "POST", "/api/kernels", {"name": SPEC}, token=TOKENS[user],
                          timeout=300)
    assert response.code == 201, (response.code, response.body)
    return str(json_of(response)["id"])


async def test_two_replicas_serve_one_fair_queue(
        kube: KubeClient, gateways: Gateways) -> None:
    spec = derived_kernelspec("python-gpu", SPEC, launchTimeout="300s")
    spec["spec"]["culling"] = {"idleTimeout": "0", "reclaimAfter": "0", "maxAge": "0"}
    await kube.create(R.KERNELSPECS, spec)
    a, b = await asyncio.gather(gateways.start("a"), gateways.start("b"))
    replicas: list[GatewayProcess] = [a, b]
    proxy = RoundRobinProxy([a.url, b.url])
    await proxy.start()
    starts: dict[str, asyncio.Future[str]] = {}
    try:
        holder = await call(a.url, "POST", "/api/kernels", {"name": SPEC}, timeout=120)
        assert holder.code == 201, holder.body
        holder_id = json_of(holder)["id"]

        # alice and bob queue, through the proxy and at each replica directly. Each start is
        # waited for until both replicas list it, so its round is decided on the same view.
        labels: dict[str, str] = {}  # kernel id -> a0, b0, ...
        plan = [("a0", "alice", proxy.url), ("a1", "alice", b.url), ("b0", "bob", a.url),
                ("a2", "alice", proxy.url), ("b1", "bob", proxy.url)]
        for n, (label, user, url) in enumerate(plan, 1):
            starts[label] = asyncio.ensure_future(start(url, user))

            async def listed(n: int = n) -> list[list[dict[str, Any]]] | None:
                seen = [await queue_of(r.url) for r in replicas]
                return seen if all(len(q) == n for q in seen) else None

            seen = await eventually(listed, timeout=60)
            new = [w["kernel_id"] for w in seen[0] if w["kernel_id"] not in labels]
            assert len(new) == 1, seen
            labels[new[0]] = label

        async def views(token: str = TOKEN) -> list[list[dict[str, Any]]]:
            # The scheduler's words are the owner's and the pod's: the same verdict, but the
            # owner may have read it a moment earlier. Everything else must be identical.
            return [[{k: v for k, v in w.items() if k != "scheduler"}
                     for w in await queue_of(r.url, token)] for r in replicas]

        async def agreed() -> list[dict[str, Any]] | None:
            # Positions agree, and each waiter's record shows its place (written by its owner).
            seen = await views()
            if seen[0] != seen[1]:
                return None
            for w in seen[0]:
                record = await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(w["kernel_id"]))
                if (record.get("status") or {}).get("queuePosition") != w["position"]:
                    return None
            return seen[0]

        queue = await eventually(agreed, timeout=60)
        assert [labels[w["kernel_id"]] for w in queue] == ["a0", "b0", "a1", "b1", "a2"]
        assert [w["position"] for w in queue] == [1, 2, 3, 4, 5]
        # What alice sees of the queue (others' entries anonymous) is the same from either.
        mine = await views(ALICE_TOKEN)
        assert mine[0] == mine[1]
        assert [w.get("user") for w in mine[0]] == ["alice", None, "alice", None, "alice"]
        assert not any(f.done() for f in starts.values())

        # Free the GPU, then each served kernel in turn: the GPU goes in the global order,
        # alternating users, whoever took the start.
        served: list[str] = []
        running: dict[str, tuple[str, str]] = {}  # label -> (kernel id, user)
        free = (holder_id, TOKEN)
        while len(served) < len(plan):
            kernel_id, token = free
            gone = await call(proxy.url, "DELETE", f"/api/kernels/{kernel_id}", token=token)
            assert gone.code == 204, gone.body
            pending = [f for f in starts.values() if not f.done()]
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            assert len(done) == 1, "one GPU, so one start at a time"
            label = next(k for k, f in starts.items() if f in done)
            served.append(label)
            user = next(u for lbl, u, _ in plan if lbl == label)
            running[label] = (starts[label].result(), user)
            free = (running[label][0], TOKENS[user])
            waiting = [w["kernel_id"] for w in queue if labels[w["kernel_id"]] not in served]

            async def caught_up(waiting: list[str] = waiting) -> bool:
                return all([w["kernel_id"] for w in q] == waiting for q in await views())

            await eventually(caught_up, timeout=30)
        assert served == ["a0", "b0", "a1", "b1", "a2"]

        # One replica holds the queue's Lease: it lifted the gates, for both replicas' starts
        # (tests/test_gpuqueue_shared_unit.py shows that only the holder ungates).
        lease = await kube.get(LEASES, LEADER_LEASE)
        holder = lease["spec"]["holderIdentity"]
        assert re.fullmatch(r"test-gateway-[ab]-[0-9a-f]{6}", holder), holder

        # Ownership is the same from either replica; once each replica has been asked for a
        # kernel (and so holds it) the owner's listing is the same as well.
        last_id, last_user = running["a2"]
        for r in replicas:
            model = await call(r.url, "GET", f"/api/kernels/{last_id}", token=TOKENS[last_user])
            assert model.code == 200, model.body
            assert json_of(model)["elastic"]["user"] == "alice"
            other = await call(r.url, "GET", f"/api/kernels/{last_id}", token=BOB_TOKEN)
            assert other.code == 404
        listings = []
        for r in replicas:
            listed_ids = await call(r.url, "GET", "/api/kernels", token=ALICE_TOKEN)
            listings.append(sorted(k["id"] for k in json_of(listed_ids)))
        assert listings[0] == listings[1] == [last_id]
        assert {0, 1} <= set(proxy.routed)
    finally:
        for fut in starts.values():
            if not fut.done():
                fut.cancel()
        await asyncio.gather(*starts.values(), return_exceptions=True)
        await proxy.stop()
