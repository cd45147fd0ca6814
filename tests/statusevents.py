"""A server-sent events client for the kernel status stream tests: events arrive on a queue as
the server sends them; waiting for one is waiting for the server, never polling."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.iostream import StreamClosedError

Event = tuple[str, Any]


class EventStream:
    """``GET url`` as ``text/event-stream``; :meth:`next` returns parsed ``(name, data)``."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.token = token
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.comments = 0
        self.code: int | None = None
        self.content_type = ""
        self._buffer = b""
        self._closed = False
        self._client = AsyncHTTPClient(force_instance=True)
        self._fetch: asyncio.Future[Any] | None = None

    @classmethod
    async def open(cls, url: str, token: str | None) -> EventStream:
        stream = cls(url, token)
        headers = {"Accept": "text/event-stream"}
        if token:
            headers["Authorization"] = f"token {token}"
        request = HTTPRequest(url, headers=headers, request_timeout=0, connect_timeout=30,
                              streaming_callback=stream._chunk,
                              header_callback=stream._header)
        stream._fetch = asyncio.ensure_future(stream._client.fetch(request, raise_error=False))
        return stream

    def _header(self, line: str) -> None:
        if line.startswith("HTTP/"):
            self.code = int(line.split()[1])
        elif line.lower().startswith("content-type:"):
            self.content_type = line.split(":", 1)[1].strip()

    def _chunk(self, chunk: bytes) -> None:
        if self._closed:
            raise StreamClosedError()  # ends the request
        self._buffer += chunk
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            name, data = "message", []
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    self.comments += 1
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
            if data:
                self.events.put_nowait((name, json.loads("\n".join(data))))

    async def next(self, timeout: float = 60) -> Event:
        getter = asyncio.ensure_future(self.events.get())
        assert self._fetch is not None
        done, _ = await asyncio.wait({getter, self._fetch}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        if self._fetch in done:
            response = self._fetch.result()
            raise AssertionError(f"the stream ended: {response.code} {response.body!r}")
        raise AssertionError(f"no event from {self.url} in {timeout} s")

    async def until(self, predicate: Callable[[str, Any], bool], timeout: float = 60,
                    seen: list[Event] | None = None) -> Event:
        """The first event (from now) for which ``predicate(name, data)`` holds; the ones
        before it are appended to ``seen``."""
        while True:
            name, data = await self.next(timeout)
            if predicate(name, data):
                return name, data
            if seen is not None:
                seen.append((name, data))

    async def close(self) -> None:
        self._closed = True
        if self._fetch is not None and not self._fetch.done():
            self._fetch.cancel()
        self._client.close()


def kernel_event(kernel_id: str, check: Callable[[dict[str, Any]], bool] = lambda _m: True
                 ) -> Callable[[str, Any], bool]:
    """A predicate for :meth:`EventStream.until`: a ``kernel`` event of ``kernel_id`` that
    passes ``check``."""
    return lambda name, data: name == "kernel" and data["id"] == kernel_id and check(data)
