"""Slow and idle connections, descriptor exhaustion, the log they flood, and websockets per user.

Through real sockets against a running gateway. The attacks that need the gateway's own
descriptors and log run it as a process (local kernels, no cluster): slowloris (headers that
never finish), a body that never finishes, and more connections than descriptors. Before the
fix, tornado gave a connection an hour to send its headers and for ever to send a body, and
running out of descriptors made its accept loop spin, logging a traceback per attempt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import resource
import sys
import typing as t
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.gateway.web.auth import hash_token
from elastic_kernels.gateway.web.httplimits import LogFloodFilter, UserSlots

from ..gatewayproc import LEAKY_ENV, GatewayProcess, eventually, wait_until
from .support import KERNEL_NAME, TOKEN, KernelWS, api, json_of, start_kernel

pytestmark = pytest.mark.timeout(60)

_SERVING = r"serving (http://127\.0\.0\.1:\d+/)"
#: Log lines that an attack on connections may cause (ours, tornado's, asyncio's).
_ABOUT_CONNECTIONS = ("Too many open files", "Cannot accept", "Refused a connection",
                      "Suppressed", "Malformed HTTP", "Timeout reading body",
                      "Exception in callback", "Error in connection callback",
                      "Task exception was never retrieved")

SUPPRESSED_REFUSALS = re.compile(r"Suppressed (\d+) more log messages starting 'Refused a conn")

LocalGateway = Callable[..., Awaitable[GatewayProcess]]


@pytest.fixture
async def local_gateway(jupyter_dirs: dict[str, Path]) -> AsyncIterator[LocalGateway]:
    """``await local_gateway(*argv, nofile=N)``: a gateway process with local kernels (the
    ``ek-test-python`` spec), optionally under an open-file limit; all stopped at the end."""
    started: list[GatewayProcess] = []

    async def start(*argv: str, nofile: int | None = None) -> GatewayProcess:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("JUPYTER", "KUBECONFIG", "ELASTIC_KERNELS"))
               and k not in LEAKY_ENV}
        env.update({
            "JUPYTER_CONFIG_DIR": str(jupyter_dirs["config"]),
            "JUPYTER_DATA_DIR": str(jupyter_dirs["data"]),
            "JUPYTER_RUNTIME_DIR": str(jupyter_dirs["runtime"]),
            "JUPYTER_NO_CONFIG": "1",
            "ELASTIC_KERNELS_TOKEN": TOKEN,
        })

        def limit_descriptors() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "elastic_kernels", "gateway", "--ip=127.0.0.1", "--port=0",
            f"--ServerApp.root_dir={jupyter_dirs['root']}",
            "--kernel-manager-class=jupyter_server.services.kernels.kernelmanager."
            "AsyncMappingKernelManager",
            "--kernel-spec-manager-class=jupyter_client.kernelspec.KernelSpecManager",
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env, preexec_fn=limit_descriptors)
        gateway = GatewayProcess(proc, f"local-{len(started)}")
        started.append(gateway)
        gateway._reader = asyncio.ensure_future(gateway._read())
        gateway.url = (await gateway.wait_for_log(_SERVING, timeout=30)).group(1)
        return gateway

    try:
        yield start
    finally:
        await asyncio.gather(*(g.stop() for g in started), return_exceptions=True)


def lines_about_connections(gateway: GatewayProcess, start: int) -> list[str]:
    return [line for line in gateway.lines[start:]
            if any(word in line for word in _ABOUT_CONNECTIONS)]


class Partial:
    """Connections that each sent the start of a request and then nothing; closed by
    :meth:`close` (in a ``finally``) whatever happened."""

    def __init__(self) -> None:
        self.readers: list[asyncio.StreamReader] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def open(self, url: str, n: int, data: bytes) -> list[asyncio.StreamReader]:
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        opened = []
        for _ in range(n):
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), 10)
            writer.write(data)
            self.writers.append(writer)
            opened.append(reader)
        self.readers += opened
        return opened

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sent before closing the connection (waits, bounded)."""
    return await asyncio.wait_for(reader.read(), timeout)


async def succeeds_eventually(url: str, timeout: float = 20) -> None:
    """A normal authenticated request gets 200, retrying while the gateway refuses or resets."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: t.Any = None
    while loop.time() < deadline:
        try:
            response = await api(url, "GET", "/api/kernels")
            if response.code == 200:
                return
            last = response.code
        except OSError as e:
            last = e
        await asyncio.sleep(0.2)
    raise AssertionError(f"no 200 within {timeout}s (last: {last})")


# -- slowloris: headers that never finish --------------------------------------------------------

async def test_slowloris_connections_are_closed_while_others_are_served(
        local_gateway: LocalGateway) -> None:
    gateway = await local_gateway("--ElasticGatewayApp.http_header_timeout=1")
    mark = len(gateway.lines)
    attack = Partial()
    try:
        readers = await attack.open(gateway.url, 200, b"GET /api/kernels HTTP/1.1\r\nHost: x\r\n")
        # Meanwhile, with 200 connections hanging, a normal request is served at once.
        response = await api(gateway.url, "GET", "/api/kernels")
        assert response.code == 200, response.body
        # Each is closed by the gateway after the header timeout; nothing was answered.
        answers = await asyncio.gather(*(closed_by_server(r, 20) for r in readers))
        assert answers == [b""] * 200
        assert len(lines_about_connections(gateway, mark)) <= 10, gateway.log[-3000:]
    finally:
        attack.close()


async def test_slow_body_is_cut_after_the_body_timeout(local_gateway: LocalGateway) -> None:
    gateway = await local_gateway("--ElasticGatewayApp.http_body_timeout=1")
    mark = len(gateway.lines)
    head = (b"POST /api/kernels HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{\"name\": ")
    attack = Partial()
    try:
        readers = await attack.open(gateway.url, 30, head)
        answers = await asyncio.gather(*(closed_by_server(r, 20) for r in readers))
        assert answers == [b""] * 30
        # tornado logs each timeout; past the budget they are counted instead.
        noise = lines_about_connections(gateway, mark)
        assert 1 <= len(noise) <= 10, noise
        await succeeds_eventually(gateway.url)
    finally:
        attack.close()


async def test_an_idle_websocket_outlives_the_http_timeouts(local_gateway: LocalGateway) -> None:
    gateway = await local_gateway("--ElasticGatewayApp.http_header_timeout=1",
                                  "--ElasticGatewayApp.http_body_timeout=1")
    kernel = await start_kernel(gateway.url)
    ws = await KernelWS.open(gateway.url, kernel["id"])
    try:
        assert (await ws.execute("x = 1"))["reply"]["status"] == "ok"
        await asyncio.sleep(3)  # idle for three header (and body) timeouts
        assert (await ws.execute("print(x + 1)"))["stdout"] == "2\n"
    finally:
        ws.close()
        await api(gateway.url, "DELETE", f"/api/kernels/{kernel['id']}")


# -- more connections than descriptors ------------------------------------------------------------

async def test_running_out_of_descriptors_does_not_flood_the_log(
        local_gateway: LocalGateway) -> None:
    # A connection cap above the descriptor limit, so accept() itself fails with EMFILE.
    gateway = await local_gateway("--ElasticGatewayApp.http_header_timeout=1",
                                  "--ElasticGatewayApp.max_connections=100000", nofile=64)
    mark = len(gateway.lines)
    attack = Partial()
    try:
        readers = await attack.open(gateway.url, 120, b"GET /api HTTP/1.1\r\n")
        await succeeds_eventually(gateway.url, timeout=30)
        answers = await asyncio.gather(*(closed_by_server(r, 30) for r in readers))
        assert answers == [b""] * 120
        noise = lines_about_connections(gateway, mark)
        assert any("Cannot accept" in line for line in noise), gateway.log[-3000:]
        # Before: a traceback per failed accept, tens of thousands of lines a second.
        assert len(noise) <= 12, noise
    finally:
        attack.close()


async def test_connections_past_the_cap_are_refused_with_a_json_503(
        local_gateway: LocalGateway) -> None:
    gateway = await local_gateway("--ElasticGatewayApp.http_header_timeout=2",
                                  "--ElasticGatewayApp.max_connections=20",
                                  "--ElasticGatewayApp.log_flood_window=1")
    mark = len(gateway.lines)
    attack = Partial()
    try:
        held = await attack.open(gateway.url, 20, b"GET /api HTTP/1.1\r\n")
        refused = await attack.open(gateway.url, 40, b"GET /api HTTP/1.1\r\n")
        answers = await asyncio.gather(*(closed_by_server(r, 10) for r in refused))
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 503 "), answer
            assert b'"reason": "TooManyConnections"' in answer

        def counted() -> int:
            noise = lines_about_connections(gateway, mark)
            shown = sum(line.split("] ", 1)[-1].startswith("Refused a connection")
                        for line in noise)
            return shown + sum(int(m.group(1)) for m in (
                SUPPRESSED_REFUSALS.search(line) for line in noise) if m)

        await wait_until(lambda: counted() == 40, lambda: gateway.log[-3000:], timeout=10)
        # At most 10 a window (1 s here) are logged; the others only counted.
        assert len(lines_about_connections(gateway, mark)) <= 24
        # Once the held ones time out, the gateway serves again.
        await asyncio.gather(*(closed_by_server(r, 20) for r in held))
        await succeeds_eventually(gateway.url)
    finally:
        attack.close()


# -- websockets per user --------------------------------------------------------------------------

ALICE = "alice-" + uuid.uuid4().hex
BOB = "bob-" + uuid.uuid4().hex


async def test_websockets_per_user_are_capped_before_the_upgrade(
        make_gateway: t.Callable[..., Awaitable[ElasticGatewayApp]], tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    users.write_text(f'{{"tokens": [{{"user": "alice", "token": "{ALICE}"}}, '
                     f'{{"user": "bob", "tokenSha256": "{hash_token(BOB)}"}}]}}')
    gateway = await make_gateway(f"--users-file={users}",
                                 "--ElasticGatewayApp.max_websockets_per_user=2")
    started = await api(gateway.url, "POST", "/api/kernels", {"name": KERNEL_NAME}, token=ALICE)
    assert started.code == 201, started.body
    kernel_id = json_of(started)["id"]
    first = await KernelWS.open(gateway.url, kernel_id, token=ALICE)
    second = await KernelWS.open(gateway.url, kernel_id, token=ALICE)
    sockets = [first, second]
    try:
        # The third is refused before the upgrade, with a JSON error.
        with pytest.raises(Exception) as refused:
            await KernelWS.open(gateway.url, kernel_id, token=ALICE)
        response = getattr(refused.value, "response", None)
        assert getattr(refused.value, "code", None) == 429, refused.value
        assert response is not None and json_of(response)["reason"] == "TooManyWebsockets"
        # Refusals take no slot, others are not affected, and a closed websocket frees one.
        assert gateway.websocket_slots.held == {"alice": 2}
        first.close()

        async def freed() -> bool:
            return gateway.websocket_slots.held.get("alice") == 1

        await eventually(freed)
        third = await KernelWS.open(gateway.url, kernel_id, token=ALICE)
        sockets.append(third)
        assert (await third.execute("print('still')"))["stdout"] == "still\n"
    finally:
        for ws in sockets:
            ws.close()


# -- the pieces, alone ---------------------------------------------------------------------------

def test_user_slots_count_per_user() -> None:
    slots = UserSlots(2)
    assert slots.acquire("a") and slots.acquire("a") and not slots.acquire("a")
    assert slots.acquire("b")
    slots.release("a")
    assert slots.acquire("a")
    for _ in range(3):
        slots.release("a")
    assert slots.held == {"b": 1}
    unlimited = UserSlots(0)
    assert all(unlimited.acquire("a") for _ in range(1000))


async def test_log_flood_filter_passes_a_burst_then_counts() -> None:
    flood = LogFloodFilter(burst=3, window=0.2)
    logger = logging.getLogger(f"test-flood-{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handlers = [Keep(), Keep()]  # one filter on two handlers counts each record once
    for handler in handlers:
        handler.addFilter(flood)
        logger.addHandler(handler)
    for i in range(10):
        logger.info("Malformed HTTP message from %s: %s", f"10.0.0.{i}", "bad")
    logger.info("Kernel started: %s", "k")  # other records always pass
    assert len(seen) == 2 * (3 + 1)
    await asyncio.sleep(0.4)
    summary = [s for s in seen if s.startswith("Suppressed")]
    assert summary == [("Suppressed 7 more log messages starting 'Malformed HTTP message from' "
                        "in the last 0.2 s")] * 2
    seen.clear()
    logger.info("Malformed HTTP message from %s: %s", "10.0.0.1", "bad")  # a new window
    assert len(seen) == 2
