"""A client that starts an endless writer and never reads costs the gateway a bounded amount.

End to end: a gateway *process* (so that its memory, read from ``/proc/<pid>/status``, is its
own) on the local cluster, a kernel in a pod, and a websocket client of either protocol (the
JSON one that notebook servers speak, the v1 one of JupyterLab 4) that sends one
``execute_request`` for an endless writer and then reads nothing. Before the fix the gateway
queued every message for that client: it grew by gigabytes in seconds.

The writer flushes after each 64 KiB write, so the kernel sends 64 KiB messages and the test
measures what the gateway *queues*; without the flush, ipykernel would batch 0.2 s of output into
single messages of hundreds of MB, and the peak would measure the size of one message instead
(see :mod:`elastic_kernels.gateway.transport.writelimit`). The kernel also counts what it wrote,
in a file, so the test knows how much output went past the client.
"""

from __future__ import annotations

import asyncio
import typing as t
import uuid
from pathlib import Path

import pytest

from bench.common import proc_rss_mib

from .gateway.support import TOKEN, KernelWS, api, json_of
from .gatewayproc import GatewayProcess, Gateways, eventually

pytestmark = pytest.mark.timeout(150)

MIB = 1024 * 1024
FLOOD_BYTES = 2048 * MIB
"""Output the kernel writes past the client that does not read: more than the 2 GiB that
grew the gateway by as much before the fix."""

RSS_BOUND_MIB = 256
"""Growth over the idle gateway allowed while flooding: the websocket's queue (at most about
2 × max_pending_bytes = 32 MiB) plus what ZeroMQ may hold for the gateway's two subscribers of
that kernel's output (its receive high-water mark, 1,000 messages of 64 KiB each, when the
event loop falls behind) plus allocator slack."""

SETTLED_BOUND_MIB = 96
"""Growth over the idle gateway allowed once the kernel is interrupted and its client left:
the offline buffer (8 MiB) and what the allocator keeps."""

WRITER = """\
import sys
n = 0
while True:
    sys.stdout.write('y' * 65536)
    sys.stdout.flush()
    n += 1
    if n % 256 == 0:
        with open({progress!r}, 'w') as f:
            f.write(str(n * 65536))
"""


class Client(KernelWS):
    """The shared kernel websocket client (either protocol), reading only when asked to."""

    @classmethod
    async def connect(cls, url: str, kernel_id: str, session_id: str, protocol: str) -> Client:
        ws = await cls.open(url, kernel_id, TOKEN, protocol=protocol, session_id=session_id,
                            max_message_size=256 * MIB)
        return t.cast(Client, ws)

    async def until(self, done: t.Callable[[dict[str, t.Any]], bool],
                    seen: t.Callable[[dict[str, t.Any]], None] = lambda m: None,
                    timeout: float = 60) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self.recv(max(0.1, deadline - loop.time()))
            assert msg is not None, \
                f"websocket closed ({self.ws.close_code} {self.ws.close_reason})"
            seen(msg)
            if done(msg):
                return

    def abandon(self) -> None:
        """Go away without reading anything queued (close frame and TCP connection)."""
        self.ws.close()
        stream = getattr(self.ws.protocol, "stream", None)
        if stream is not None:
            stream.close()


def replied(msg_id: str) -> t.Callable[[dict[str, t.Any]], bool]:
    return lambda m: m["msg_type"] == "execute_reply" and \
        m["parent_header"].get("msg_id") == msg_id


def idle(msg_id: str) -> t.Callable[[dict[str, t.Any]], bool]:
    return lambda m: m["msg_type"] == "status" and m["parent_header"].get("msg_id") == msg_id \
        and m["content"]["execution_state"] == "idle"


def written(progress: Path) -> int:
    try:
        return int(progress.read_text() or 0)
    except (OSError, ValueError):
        return 0


async def rss_while(gateway: GatewayProcess, condition: t.Callable[[], bool],
                    limit_mib: float, timeout: float) -> float:
    """Sample the gateway's RSS every 0.1 s while ``condition()`` holds; the peak. Stops as
    soon as it exceeds ``limit_mib`` (the test then fails, before the machine runs short)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    peak = 0.0
    while condition():
        peak = max(peak, proc_rss_mib(gateway.proc.pid))
        if peak > limit_mib:
            break
        assert loop.time() < deadline, "the kernel did not write enough in time"
        await asyncio.sleep(0.1)
    return peak


async def settle(gateway: GatewayProcess, seconds: float) -> float:
    """The gateway's RSS after ``seconds``, the lowest of a few samples (allocator noise)."""
    samples = []
    for _ in range(5):
        await asyncio.sleep(seconds / 5)
        samples.append(proc_rss_mib(gateway.proc.pid))
    return min(samples)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["json", "v1"])
async def test_a_client_that_never_reads_costs_a_bounded_amount(
        gateways: Gateways, tmp_path: Path, protocol: str) -> None:
    gateway = await gateways.start("flood")
    kernel_id = await gateway.start_kernel()
    session = uuid.uuid4().hex
    progress = tmp_path / "written"
    client = await Client.connect(gateway.url, kernel_id, session, protocol)
    flooding = True
    try:
        warm = client.send("execute_request", {"code": "import sys", "silent": False})
        await client.until(idle(warm))
        baseline = await settle(gateway, 1.0)

        writer = client.send("execute_request", {"code": WRITER.format(progress=str(progress)),
                                                 "silent": False})
        # From here on the client reads nothing.
        peak = await rss_while(gateway, lambda: written(progress) < FLOOD_BYTES,
                               baseline + RSS_BOUND_MIB, timeout=90)
        assert peak - baseline <= RSS_BOUND_MIB, (
            f"{written(progress) / MIB:.0f} MiB written past the client grew the gateway from "
            f"{baseline:.0f} to {peak:.0f} MiB")

        # The client goes away; what was queued for it is released (the kernel writes on,
        # into the offline buffer's bound).
        client.abandon()

        async def disconnected() -> bool:
            response = await api(gateway.url, "GET", f"/api/kernels/{kernel_id}")
            return response.code == 200 and json_of(response)["connections"] == 0

        await eventually(disconnected, timeout=30)
        after_close = await settle(gateway, 1.0)
        assert after_close - baseline <= RSS_BOUND_MIB, (baseline, after_close)

        # The same session comes back: it gets output (replayed, then live), as a client that
        # reads does.
        client = await Client.connect(gateway.url, kernel_id, session, protocol)
        output = {"bytes": 0}

        def count(msg: dict[str, t.Any]) -> None:
            if msg["msg_type"] == "stream" and msg["parent_header"].get("msg_id") == writer:
                output["bytes"] += len(msg["content"]["text"])

        await client.until(lambda m: output["bytes"] >= 4 * MIB, count)

        interrupted = await api(gateway.url, "POST", f"/api/kernels/{kernel_id}/interrupt")
        assert interrupted.code == 204, interrupted.body
        flooding = False
        await client.until(idle(writer), timeout=60)
        check = client.send("execute_request", {"code": "print('still here')",
                                                "silent": False})
        printed: list[str] = []
        await client.until(idle(check), lambda m: printed.append(m["content"]["text"])
                           if m["msg_type"] == "stream" else None)
        assert "".join(printed) == "still here\n"

        # Nothing flows any more, and the memory is given back.
        client.abandon()
        await eventually(disconnected, timeout=30)
        settled = await settle(gateway, 2.0)
        assert settled - baseline <= SETTLED_BOUND_MIB, (baseline, peak, after_close, settled)
    finally:
        client.abandon()
        if flooding:  # never leave the writer running
            await api(gateway.url, "POST", f"/api/kernels/{kernel_id}/interrupt")
        await api(gateway.url, "DELETE", f"/api/kernels/{kernel_id}")
