"""The notebook-server side connection class, on a real jupyter_server in this process.

The subprocess tests in test_notebook_server.py show the whole path works; this one runs the
notebook server in the test's event loop so that both of its kernel sockets can be inspected:
the browser-facing websocket and its websocket client to the gateway must have TCP_NODELAY.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import typing as t
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from jupyter_server.gateway.gateway_client import GatewayClient
from jupyter_server.serverapp import ServerApp
from traitlets import Unicode
from traitlets.config import LoggingConfigurable

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.notebook import NoDelayGatewayWebSocketConnection
from elastic_kernels.testing import free_port

from .support import KERNEL_NAME, TOKEN, KernelWS, api, json_of


class RecordingConnection(NoDelayGatewayWebSocketConnection):
    """Remembers its instances so the test can look at their sockets."""

    instances: t.ClassVar[list[RecordingConnection]] = []

    async def connect(self) -> None:
        RecordingConnection.instances.append(self)
        await super().connect()


def nodelay(sock: socket.socket) -> int:
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


@pytest.fixture
async def notebook_app(
    gateway: ElasticGatewayApp, jupyter_dirs: dict[str, Path], tmp_path: Path
) -> AsyncIterator[ServerApp]:
    """A plain jupyter_server ServerApp with --gateway-url, serving in this event loop."""
    saved_signals = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    GatewayClient.clear_instance()
    root = tmp_path / "notebook-root"
    root.mkdir()
    RecordingConnection.instances.clear()
    app = ServerApp(kernel_websocket_connection_class=RecordingConnection)
    try:
        app.initialize(
            argv=[
                "--ServerApp.ip=127.0.0.1",
                # A chosen port: jupyter_server before 2.17 never reads back port 0's choice.
                f"--ServerApp.port={free_port()}",
                "--ServerApp.port_retries=0",
                "--ServerApp.open_browser=False",
                f"--ServerApp.root_dir={root}",
                f"--IdentityProvider.token=nb-{TOKEN}",
                f"--gateway-url={gateway.url}",
                f"--GatewayClient.auth_token={TOKEN}",
            ],
            find_extensions=False,
        )
        # initialize() scheduled the bind as a loop callback; wait until it serves.
        for _ in range(200):
            await asyncio.sleep(0.01)
            try:
                status = await api(
                    f"http://127.0.0.1:{app.port}", "GET", "/api/status", token=f"nb-{TOKEN}"
                )
            except OSError:
                continue
            if status.code == 200:
                break
        yield app
    finally:
        await app._cleanup()
        GatewayClient.clear_instance()
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)


@pytest.mark.timeout(60)
async def test_both_notebook_side_sockets_have_nodelay(
    gateway: ElasticGatewayApp, notebook_app: ServerApp
) -> None:
    url = f"http://127.0.0.1:{notebook_app.port}/"
    token = f"nb-{TOKEN}"
    started = await api(url, "POST", "/api/kernels", {"name": KERNEL_NAME}, token=token)
    assert started.code == 201, started.body
    kernel_id = json_of(started)["id"]
    ws = await KernelWS.open(url, kernel_id, token=token)
    try:
        result = await ws.execute("print(6*7)")
        assert result["stdout"] == "42\n"
        (connection,) = RecordingConnection.instances
        assert connection.ws is not None
        assert nodelay(connection.ws.protocol.stream.socket) == 1  # notebook -> gateway
        browser_side = connection.websocket_handler.ws_connection.stream.socket
        assert nodelay(browser_side) == 1  # notebook -> browser
        (gateway_side,) = gateway.open_websockets
        assert nodelay(gateway_side.ws_connection.stream.socket) == 1  # gateway -> notebook
    finally:
        ws.close()
    deleted = await api(url, "DELETE", f"/api/kernels/{kernel_id}", token=token)
    assert deleted.code == 204
    assert gateway.kernel_manager.list_kernel_ids() == []


class KernelRef(LoggingConfigurable):
    """The parent a relay connection reads its kernel id from (the notebook server's kernel
    manager, headless here)."""

    kernel_id = Unicode()


@asynccontextmanager
async def headless_connection(
    gateway: ElasticGatewayApp,
    cls: type[NoDelayGatewayWebSocketConnection] = NoDelayGatewayWebSocketConnection,
) -> AsyncIterator[NoDelayGatewayWebSocketConnection]:
    """A kernel on the gateway and a relay connection to it, not yet connected, as a notebook
    server builds one but without a browser; disconnected and shut down after."""
    GatewayClient.clear_instance()
    GatewayClient.instance(url=gateway.url, auth_token=TOKEN)
    try:
        started = await api(gateway.url, "POST", "/api/kernels", {"name": KERNEL_NAME})
        kernel_id = json_of(started)["id"]
        connection = cls(parent=KernelRef(kernel_id=kernel_id))
        connection.session.session = uuid.uuid4().hex
        try:
            yield connection
        finally:
            connection.disconnect()
            await api(gateway.url, "DELETE", f"/api/kernels/{kernel_id}")
    finally:
        GatewayClient.clear_instance()


@pytest.mark.timeout(60)
async def test_connection_without_browser_handler(gateway: ElasticGatewayApp) -> None:
    """Used headless (no browser websocket), the connection still relays to the gateway."""
    received: asyncio.Queue[dict[str, t.Any]] = asyncio.Queue()

    class Collecting(NoDelayGatewayWebSocketConnection):
        def handle_outgoing_message(self, incoming_msg: str, *args: t.Any) -> None:
            received.put_nowait(json.loads(incoming_msg))

    async with headless_connection(gateway, Collecting) as connection:
        await connection.connect()
        assert connection.ws_future is not None
        await asyncio.wait_for(connection.ws_future, 30)
        await asyncio.sleep(0)  # let the connect future's callbacks run
        assert connection.ws is not None
        assert nodelay(connection.ws.protocol.stream.socket) == 1
        request = connection.session.msg("execute_request", {"code": "print(6*7)"})
        request["header"]["msg_id"] = request["msg_id"] = uuid.uuid4().hex
        request["channel"] = "shell"
        connection.handle_incoming_message(json.dumps(request, default=str))
        stdout, reply = "", None
        while reply is None or stdout != "42\n":
            msg = await asyncio.wait_for(received.get(), 20)
            if msg["parent_header"].get("msg_id") != request["msg_id"]:
                continue
            if msg["msg_type"] == "stream":
                stdout += msg["content"]["text"]
            elif msg["msg_type"] == "execute_reply":
                reply = msg["content"]
        assert reply["status"] == "ok"


async def wait_until(condition: t.Callable[[], bool], what: str, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)


@pytest.mark.timeout(60)
async def test_gateway_leg_lost_closes_the_browsers_leg(
    gateway: ElasticGatewayApp, notebook_app: ServerApp
) -> None:
    """When the gateway closes its end (here as it does for a stale connection of the same
    session; a gateway restart looks the same), the browser's websocket is closed too, saying
    why, rather than left open while the notebook server reconnects on its own and drops what
    the browser sends meanwhile. The browser's reconnection, with its session id, then works
    and gets what the gateway buffered for the session in the gap."""
    url = f"http://127.0.0.1:{notebook_app.port}/"
    token = f"nb-{TOKEN}"
    started = await api(url, "POST", "/api/kernels", {"name": KERNEL_NAME}, token=token)
    kernel_id = json_of(started)["id"]
    ws = await KernelWS.open(url, kernel_id, token=token)
    try:
        assert (await ws.execute("x = 6*7"))["reply"]["status"] == "ok"
        (gateway_side,) = gateway.open_websockets
        gateway_side.close()
        assert await ws.recv() is None, "the browser's leg was closed"
        assert ws.ws.close_code == 1011
        assert "gateway closed the connection" in (ws.ws.close_reason or "")
    finally:
        ws.close()
    again = await KernelWS.open(url, kernel_id, token=token, session_id=ws.session_id)
    try:
        assert (await again.execute("print(x)"))["stdout"] == "42\n"
    finally:
        again.close()
    assert (await api(url, "DELETE", f"/api/kernels/{kernel_id}", token=token)).code == 204


@pytest.mark.timeout(60)
async def test_browser_gone_while_connecting_leaves_no_gateway_connection(
    gateway: ElasticGatewayApp,
) -> None:
    """A browser that leaves while its gateway leg is still connecting (JupyterLab opens and
    at once closes a new kernel's first websocket) leaves nothing open on the gateway. Upstream
    cancels the connect future, which does not stop the connection: it would stay open on the
    gateway under the browser's session id, and could later replace that session's live
    connection there as stale."""
    async with headless_connection(gateway) as connection:
        await connection.connect()
        assert connection.ws_future is not None and not connection.ws_future.done()
        connection.disconnect()  # before the handshake ended
        await asyncio.wait_for(asyncio.shield(connection.ws_future), 30)
        assert connection.ws is None, "a departed browser's leg is not taken into use"
        await wait_until(lambda: not gateway.open_websockets,
                         "the gateway's end of the departed browser's leg closed")
