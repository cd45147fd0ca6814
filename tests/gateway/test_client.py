"""The notebook-server side connection class, against a real gateway."""

from __future__ import annotations

import asyncio
import json
import socket
import typing as t
import uuid
from collections.abc import Iterator

import pytest
from jupyter_server.gateway.gateway_client import GatewayClient
from traitlets import Unicode
from traitlets.config import LoggingConfigurable

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.gateway.client import NoDelayGatewayWebSocketConnection

from .support import TOKEN, start_kernel


class _KernelRef(LoggingConfigurable):
    """What a connection needs from its parent on the notebook server: the kernel id."""

    kernel_id = Unicode()


class _CollectingConnection(NoDelayGatewayWebSocketConnection):
    """Keeps what the gateway sends instead of writing it to a browser websocket."""

    def __init__(self, queue: asyncio.Queue[dict[str, t.Any]], **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self._queue = queue

    def handle_outgoing_message(self, incoming_msg: str, *args: t.Any) -> None:
        self._queue.put_nowait(json.loads(incoming_msg))


@pytest.fixture
def gateway_client(gateway: ElasticGatewayApp) -> Iterator[GatewayClient]:
    GatewayClient.clear_instance()
    client = GatewayClient.instance(url=gateway.url, auth_token=TOKEN)
    try:
        yield client
    finally:
        GatewayClient.clear_instance()


@pytest.mark.timeout(60)
async def test_nodelay_connection_relays_kernel_messages(
    gateway: ElasticGatewayApp, gateway_client: GatewayClient
) -> None:
    kernel_id = (await start_kernel(gateway.url))["id"]
    received: asyncio.Queue[dict[str, t.Any]] = asyncio.Queue()
    connection = _CollectingConnection(received, parent=_KernelRef(kernel_id=kernel_id))
    connection.session.session = uuid.uuid4().hex
    await connection.connect()
    try:
        assert connection.ws_future is not None
        await asyncio.wait_for(connection.ws_future, 30)
        await asyncio.sleep(0)  # let the connect future's callbacks run
        assert connection.ws is not None
        client_socket = connection.ws.protocol.stream.socket
        assert client_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1

        handlers = list(gateway.open_websockets)
        assert len(handlers) == 1
        server_socket = handlers[0].ws_connection.stream.socket
        assert server_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1

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
        assert stdout == "42\n"
    finally:
        connection.disconnect()
