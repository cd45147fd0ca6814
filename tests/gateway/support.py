"""Test helpers: HTTP calls and a kernel websocket client for the gateway tests."""

from __future__ import annotations

import asyncio
import json
import typing as t
import uuid
from collections.abc import Callable

from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.websocket import WebSocketClientConnection, websocket_connect

TOKEN = "test-token-" + uuid.uuid4().hex
KERNEL_NAME = "ek-test-python"
LOGO = b"\x89PNG\r\n\x1a\n not really a picture"


async def api(
    base_url: str,
    method: str,
    path: str,
    body: t.Any = None,
    *,
    token: str | None = TOKEN,
    raw_body: bytes | None = None,
) -> HTTPResponse:
    """One HTTP request; never raises for HTTP error statuses."""
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
        request_timeout=30,
        allow_nonstandard_methods=True,
    )
    return await AsyncHTTPClient().fetch(request, raise_error=False)


def json_of(response: HTTPResponse) -> t.Any:
    return json.loads(response.body or b"null")


async def start_kernel(base_url: str, name: str = KERNEL_NAME, **body: t.Any) -> dict[str, t.Any]:
    response = await api(base_url, "POST", "/api/kernels", {"name": name, **body})
    assert response.code == 201, response.body
    return t.cast("dict[str, t.Any]", json_of(response))


class KernelWS:
    """A kernel websocket client speaking the legacy JSON protocol (as the notebook server)."""

    def __init__(self, ws: WebSocketClientConnection, session_id: str) -> None:
        self.ws = ws
        self.session = Session(session=session_id, username="test")
        self.pending: list[dict[str, t.Any]] = []

    @classmethod
    async def open(
        cls, base_url: str, kernel_id: str, token: str | None = TOKEN, *, in_query: bool = False,
        session_id: str | None = None,
    ) -> KernelWS:
        """Connect; the token goes in the Authorization header, or the URL as browsers do.

        Reusing a ``session_id`` reconnects as the same client (the gateway replays what it
        buffered for it)."""
        session_id = session_id or uuid.uuid4().hex
        ws_url = base_url.replace("http://", "ws://").rstrip("/")
        url = f"{ws_url}/api/kernels/{kernel_id}/channels?session_id={session_id}"
        headers = {"Authorization": f"token {token}"} if token and not in_query else {}
        if token and in_query:
            url += f"&token={token}"
        ws = await websocket_connect(
            HTTPRequest(url, headers=headers, request_timeout=30, connect_timeout=10)
        )
        return cls(ws, session_id)

    def send(self, msg_type: str, content: dict[str, t.Any], channel: str = "shell") -> str:
        msg = self.session.msg(msg_type, content)
        # Session msg_ids are "<session>_<pid>_<counter>"; the in-process gateway uses the same
        # session id and pid for its own kernel_info requests, so make ours unique.
        msg["header"]["msg_id"] = msg["msg_id"] = uuid.uuid4().hex
        msg["channel"] = channel
        self.ws.write_message(json.dumps(msg, default=json_default))
        return t.cast(str, msg["header"]["msg_id"])

    async def recv(self, timeout: float = 20) -> dict[str, t.Any] | None:
        raw = await asyncio.wait_for(self.ws.read_message(), timeout)
        if raw is None:
            return None
        return t.cast("dict[str, t.Any]", json.loads(raw))

    async def execute(self, code: str, timeout: float = 20) -> dict[str, t.Any]:
        """Run ``code``; return its reply, stdout, errors and iopub statuses."""
        msg_id = self.send("execute_request", {"code": code, "silent": False})
        result: dict[str, t.Any] = {"reply": None, "stdout": "", "errors": [], "idle": False}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while result["reply"] is None or not result["idle"]:
            msg = await self.recv(max(0.1, deadline - loop.time()))
            assert msg is not None, "websocket closed while waiting for the reply"
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "execute_reply":
                result["reply"] = msg["content"]
            elif kind == "stream" and msg["content"]["name"] == "stdout":
                result["stdout"] += msg["content"]["text"]
            elif kind == "error":
                result["errors"].append(msg["content"])
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                result["idle"] = True
        return result

    async def start_busy(self, code: str, timeout: float = 20) -> str:
        """Send ``code`` and return its msg_id once the kernel reports itself busy with it."""
        msg_id = self.send("execute_request", {"code": code, "silent": False})
        await self.wait_for(
            lambda m: m["msg_type"] == "status"
            and m["parent_header"].get("msg_id") == msg_id
            and m["content"]["execution_state"] == "busy",
            timeout,
        )
        return msg_id

    async def wait_for(
        self, predicate: Callable[[dict[str, t.Any]], bool], timeout: float = 20
    ) -> dict[str, t.Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self.recv(max(0.1, deadline - loop.time()))
            assert msg is not None, "websocket closed while waiting"
            if predicate(msg):
                return msg

    async def recv_until_closed(self, timeout: float = 20) -> int | None:
        """Drain messages until the server closes the socket; return its close code."""
        while await self.recv(timeout) is not None:
            pass
        return self.ws.close_code

    def close(self) -> None:
        self.ws.close()
