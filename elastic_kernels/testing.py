"""Clients for driving a gateway from tests and benchmarks, as ``kopf.testing`` is for operators.

A gateway is tested the way it is used: over HTTP and the kernel websocket, from outside the
process. The test suite, the benchmarks and anyone testing a deployment need the same small
client, so it is here, in the package, once:

* :func:`api` - one HTTP request with a token, never raising for HTTP error statuses;
* :class:`KernelWS` - a kernel websocket client speaking either protocol a real client speaks:
  JupyterLab 4's ``v1.kernel.websocket.jupyter.org`` binary frames, built and parsed with
  jupyter_server's own ``serialize_msg_to_ws_v1``/``deserialize_msg_from_ws_v1``, or the legacy
  JSON text frames that jupyter_server's gateway client (a notebook server with
  ``--gateway-url``) uses;
* :func:`free_port` - a free loopback port for a server a test starts.

Nothing here is imported by the product; it depends on tornado, jupyter_client and
jupyter_server only.
"""

from __future__ import annotations

import asyncio
import json
import socket
import typing as t
import uuid
from collections.abc import Callable

from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.base import (
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.websocket import WebSocketClientConnection, websocket_connect

__all__ = ["V1_PROTOCOL", "Execution", "KernelWS", "api", "free_port", "json_of"]

JSON = dict[str, t.Any]

#: The websocket subprotocol JupyterLab 4 asks for: raw message parts in one binary frame.
V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A port free on ``host`` right now (the OS picks it; a server bound later may race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def api(
    base_url: str,
    method: str,
    path: str,
    body: t.Any = None,
    *,
    token: str | None = None,
    raw_body: bytes | None = None,
    timeout: float = 30,
) -> HTTPResponse:
    """One HTTP request; never raises for HTTP error statuses (tests assert on them)."""
    headers = {"Authorization": f"token {token}"} if token else {}
    data: bytes | None = raw_body
    if data is None and body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if data is None and method in ("POST", "PUT", "PATCH"):
        data = b""
    request = HTTPRequest(
        base_url.rstrip("/") + path,
        method=method,
        headers=headers,
        body=data,
        request_timeout=timeout,
        connect_timeout=timeout,
        allow_nonstandard_methods=True,
    )
    return await AsyncHTTPClient(max_clients=100).fetch(request, raise_error=False)


def json_of(response: HTTPResponse) -> t.Any:
    return json.loads(response.body or b"null")


class Execution(t.TypedDict):
    """What one ``execute_request`` produced, once its reply and its idle status arrived."""

    reply: JSON | None
    """The ``execute_reply`` message's content."""
    message: JSON | None
    """The whole ``execute_reply`` message."""
    stdout: str
    errors: list[JSON]
    idle: bool


class KernelWS:
    """A kernel websocket client, as JupyterLab's (``protocol="v1"``) or a notebook server's
    gateway client (``protocol="json"``)."""

    def __init__(self, ws: WebSocketClientConnection, session_id: str, protocol: str = "json",
                 username: str = "test") -> None:
        self.ws = ws
        self.protocol = protocol
        self.session_id = session_id
        self.session = Session(session=session_id, username=username)
        self._reader: asyncio.Future[None] | None = None

    @classmethod
    async def open(
        cls,
        base_url: str,
        kernel_id: str,
        token: str | None = None,
        *,
        protocol: str = "json",
        in_query: bool = False,
        session_id: str | None = None,
        timeout: float = 30,
        max_message_size: int = 64 * 1024 * 1024,
    ) -> KernelWS:
        """Connect. The token goes in the Authorization header, or in the URL as browsers do
        (``in_query``). Reusing a ``session_id`` reconnects as the same client: the gateway
        replays what it buffered for it."""
        if protocol not in ("json", "v1"):
            raise ValueError(f"protocol must be 'json' or 'v1', not {protocol!r}")
        session_id = session_id or uuid.uuid4().hex
        ws_url = base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        url = f"{ws_url.rstrip('/')}/api/kernels/{kernel_id}/channels?session_id={session_id}"
        headers = {"Authorization": f"token {token}"} if token and not in_query else {}
        if token and in_query:
            url += f"&token={token}"
        ws = await websocket_connect(
            HTTPRequest(url, headers=headers, request_timeout=timeout, connect_timeout=timeout),
            max_message_size=max_message_size,
            subprotocols=[V1_PROTOCOL] if protocol == "v1" else None,
        )
        if protocol == "v1" and ws.selected_subprotocol != V1_PROTOCOL:
            ws.close()
            raise ConnectionError(f"the server did not accept {V1_PROTOCOL}")
        if ws.protocol is not None:
            ws.protocol.set_nodelay(True)  # as a browser: no Nagle delay on small messages
        return cls(ws, session_id, protocol)

    # -- sending ----------------------------------------------------------------------------

    def send(self, msg_type: str, content: JSON, channel: str = "shell") -> str:
        """Send one message; returns its msg_id."""
        msg = self.session.msg(msg_type, content)
        # Session msg_ids are "<session>_<pid>_<counter>"; an in-process gateway uses the same
        # pid for its own kernel_info requests, so make ours unique.
        msg_id = uuid.uuid4().hex
        msg["header"]["msg_id"] = msg["msg_id"] = msg_id
        if self.protocol == "v1":
            self.ws.write_message(serialize_msg_to_ws_v1(msg, channel, self.session.pack),
                                  binary=True)
        else:
            msg["channel"] = channel
            self.ws.write_message(json.dumps(msg, default=json_default))
        return msg_id

    # -- receiving --------------------------------------------------------------------------

    async def recv(self, timeout: float = 20) -> JSON | None:
        """The next message, or None once the server closed the websocket."""
        raw = await asyncio.wait_for(self.ws.read_message(), timeout)
        if raw is None:
            return None
        if self.protocol == "v1":
            if not isinstance(raw, bytes):
                raise ConnectionError("unexpected text frame on a v1 websocket")
            channel, parts = deserialize_msg_from_ws_v1(raw)
            unpack = self.session.unpack
            header = unpack(parts[0])
            return {"channel": channel, "header": header, "msg_type": header.get("msg_type"),
                    "msg_id": header.get("msg_id"), "parent_header": unpack(parts[1]),
                    "metadata": unpack(parts[2]), "content": unpack(parts[3]),
                    "buffers": parts[4:]}
        if isinstance(raw, bytes):
            raise ConnectionError("unexpected binary websocket frame on a JSON websocket")
        return t.cast(JSON, json.loads(raw))

    async def wait_for(self, predicate: Callable[[JSON], bool], timeout: float = 20) -> JSON:
        """The first message ``predicate`` accepts (others are dropped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self.recv(max(0.01, deadline - loop.time()))
            if msg is None:
                raise ConnectionError(
                    f"websocket closed while waiting ({self.ws.close_code} "
                    f"{self.ws.close_reason})")
            if predicate(msg):
                return msg

    async def wait_reply(self, msg_id: str, reply_type: str, timeout: float = 20) -> JSON:
        return await self.wait_for(
            lambda m: m.get("msg_type") == reply_type
            and (m.get("parent_header") or {}).get("msg_id") == msg_id, timeout)

    async def kernel_info(self, timeout: float = 60) -> JSON:
        msg_id = self.send("kernel_info_request", {})
        return await self.wait_reply(msg_id, "kernel_info_reply", timeout)

    async def execute(self, code: str, timeout: float = 20, *, store_history: bool = True,
                      on_output: Callable[[JSON], None] | None = None) -> Execution:
        """Run ``code``; return when both its reply and its idle status have arrived.

        ``on_output`` sees every other message of the request (streams, display data), e.g. to
        count output without keeping it."""
        msg_id = self.send("execute_request", {"code": code, "silent": False,
                                               "store_history": store_history})
        result: Execution = {"reply": None, "message": None, "stdout": "", "errors": [],
                             "idle": False}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while result["reply"] is None or not result["idle"]:
            msg = await self.recv(max(0.01, deadline - loop.time()))
            if msg is None:
                raise ConnectionError(
                    f"websocket closed while waiting for the reply ({self.ws.close_code} "
                    f"{self.ws.close_reason})")
            if (msg.get("parent_header") or {}).get("msg_id") != msg_id:
                continue
            kind = msg.get("msg_type")
            content = msg.get("content") or {}
            if kind == "execute_reply":
                result["reply"], result["message"] = content, msg
            elif kind == "status" and content.get("execution_state") == "idle":
                result["idle"] = True
            else:
                if kind == "stream" and content.get("name") == "stdout":
                    result["stdout"] += content.get("text", "")
                elif kind == "error":
                    result["errors"].append(content)
                if on_output is not None:
                    on_output(msg)
        return result

    async def start_busy(self, code: str, timeout: float = 20) -> str:
        """Send ``code`` and return its msg_id once it runs.

        The cell first prints a marker, and the marker's arrival is awaited. The kernel's
        "busy" status is not enough, for an interrupt above all: ipykernel reports busy before
        the cell's code starts, and a SIGINT landing in between hit the kernel's own machinery,
        so that no reply came, or the kernel answered nothing after (about 1 run in 8 on a
        loaded machine).
        """
        marker = f"ek-running-{uuid.uuid4().hex[:12]}"
        msg_id = self.send("execute_request",
                           {"code": f"print({marker!r}, flush=True)\n{code}", "silent": False})
        await self.wait_for(
            lambda m: m.get("msg_type") == "stream"
            and (m.get("parent_header") or {}).get("msg_id") == msg_id
            and marker in str((m.get("content") or {}).get("text", "")),
            timeout,
        )
        return msg_id

    async def recv_until_closed(self, timeout: float = 20) -> int | None:
        """Drain messages until the server closes the socket; return its close code."""
        while await self.recv(timeout) is not None:
            pass
        return self.ws.close_code

    def keep_reading(self) -> None:
        """Read and drop messages in the background from now on, as an open notebook tab does.

        An idle client must still read: tornado's client holds one unread message at most and
        stops reading frames behind it, pongs included, so a client that never reads is
        dropped by the server's websocket ping timeout as a dead one.
        """
        async def drain() -> None:
            while await self.ws.read_message() is not None:
                pass

        self._reader = asyncio.ensure_future(drain())

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self.ws.close()
