"""A request body over ``max_body_size`` gets a JSON 413, not tornado's bare 400.

tornado enforces the limit while reading the body and answers ``400 Bad Request`` with no body
and no reason, so a client that sent too much cannot tell why. When the ``Content-Length``
header already says the body is too large, we answer before reading any of it: ``413`` with the
gateway's usual ``{"message", "reason"}`` JSON, then close the connection (the unread body must
not be taken for the next request). Before closing, what the client is still sending is read and
thrown away (up to ``DRAIN_BYTES``, for at most ``DRAIN_SECONDS``): most clients send the whole
body before reading the answer, and closing under them turns the 413 into "connection reset".
A chunked body that grows past the limit still meets tornado's own check.
"""

from __future__ import annotations

import asyncio
import json
import logging
import typing as t

from tornado import httputil
from tornado.http1connection import HTTP1Connection

__all__ = ["limit_body"]

log = logging.getLogger(__name__)

DRAIN_BYTES = 64 * 1024 * 1024
DRAIN_SECONDS = 10.0


class _BodyLimit(httputil.HTTPMessageDelegate):
    def __init__(self, delegate: httputil.HTTPMessageDelegate,
                 connection: httputil.HTTPConnection, limit: int) -> None:
        self.delegate = delegate
        self.connection = connection
        self.limit = limit

    def headers_received(
        self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> t.Awaitable[None] | None:
        raw = headers.get("Content-Length", "")
        if raw.isdigit() and int(raw) > self.limit and isinstance(self.connection, HTTP1Connection):
            return self._refuse(int(raw))
        return self.delegate.headers_received(start_line, headers)

    async def _refuse(self, size: int) -> None:
        context = getattr(self.connection, "context", None)
        log.warning("Refused a %d-byte request body from %s (limit %d bytes)", size,
                    getattr(context, "remote_ip", "?"), self.limit)
        body = json.dumps({
            "message": f"Request body of {size} bytes is larger than the {self.limit} bytes "
                       "the gateway accepts",
            "reason": "RequestEntityTooLarge",
        }).encode()
        head = (b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
        stream = t.cast(HTTP1Connection, self.connection).detach()  # tornado stops here
        try:
            await stream.write(head + body)
            remaining = min(size, DRAIN_BYTES)
            deadline = asyncio.get_running_loop().time() + DRAIN_SECONDS
            while remaining > 0:
                left = deadline - asyncio.get_running_loop().time()
                chunk = await asyncio.wait_for(
                    stream.read_bytes(min(remaining, 1 << 16), partial=True), max(left, 0.0))
                remaining -= len(chunk)
        except Exception:  # noqa: BLE001 - the client went away or took too long: done
            pass
        finally:
            stream.close()

    def data_received(self, chunk: bytes) -> t.Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()


def limit_body(delegate: httputil.HTTPMessageDelegate, connection: httputil.HTTPConnection,
               limit: int | None) -> httputil.HTTPMessageDelegate:
    """Wrap a server's request delegate (``HTTPServer.start_request``) with the 413 check."""
    if not limit:
        return delegate
    return _BodyLimit(delegate, connection, limit)
