"""The gateway's kernel status, relayed by the notebook server to its user's browser.

Routes the extension adds (relative to the notebook server's base URL; the notebook server's own
auth, as for its kernel API):

``GET /elastic-kernels/api/status``
    ``GET /api/elastic/kernels`` of the gateway (JSON, once).
``GET /elastic-kernels/api/stream``
    ``GET /api/elastic/kernels/stream`` of the gateway: server-sent events, passed through chunk
    by chunk as they arrive (nothing buffered, nothing polled).
``POST /elastic-kernels/api/kernels/{id}/keepalive``
    ``POST /api/elastic/kernels/{id}/keepalive`` of the gateway.
``GET /elastic-kernels/api/kernels/{id}/diagnostics``
    ``GET /api/elastic/kernels/{id}/diagnostics`` of the gateway (pod events, launcher log).

Each request goes to the gateway with this server's own gateway credentials
(``GatewayClient``'s auth token and headers, through its ``load_connection_args``), and with
nothing of the browser's request: no cookie, no header, no query. So a user sees what the
gateway shows *this server's* identity: with a per-user token (or JupyterHub), their own
kernels. The gateway's answer (status and JSON body, or the event stream) is passed on as it is.
"""

from __future__ import annotations

import asyncio
import json
import typing as t

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError

__all__ = ["status_proxy_handlers"]

#: A kernel id as the gateway takes it (the gateway validates it again).
_KERNEL_ID = r"(?P<kernel_id>[0-9a-fA-F-]{36})"


def _gateway(handler: web.RequestHandler) -> t.Any:
    serverapp = handler.settings.get("serverapp")
    gateway = getattr(serverapp, "gateway_config", None)
    if gateway is None or not getattr(gateway, "gateway_enabled", False):
        raise web.HTTPError(404, "No gateway configured")
    return gateway


def _request(gateway: t.Any, path: str, *, method: str = "GET", **overrides: t.Any
             ) -> HTTPRequest:
    """A request to the gateway with only this server's gateway credentials."""
    args = gateway.load_connection_args(headers={"Accept": "application/json"})
    args.update(overrides)
    return HTTPRequest(url_path_join(gateway.url, path), method=method,
                       body=b"" if method == "POST" else None, **args)


class _ProxyBase(APIHandler):
    auth_resource = "kernels"

    async def relay_once(self, path: str, method: str = "GET") -> None:
        gateway = _gateway(self)
        client = AsyncHTTPClient()
        try:
            response = await client.fetch(_request(gateway, path, method=method))
        except HTTPClientError as e:
            if e.response is None:
                raise web.HTTPError(502, f"Gateway unreachable: {e}") from None
            response = e.response
        except OSError as e:
            raise web.HTTPError(502, f"Gateway unreachable: {e}") from None
        self.set_status(response.code)
        self.finish(response.body or b"{}")

    def write_error(self, status_code: int, **kwargs: t.Any) -> None:
        exc = (kwargs.get("exc_info") or (None, None))[1]
        message = getattr(exc, "log_message", None) or "Error"
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message, "reason": getattr(exc, "reason", None)}))


class StatusProxyHandler(_ProxyBase):
    """``GET /elastic-kernels/api/status``."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.relay_once("/api/elastic/kernels")


class KeepaliveProxyHandler(_ProxyBase):
    """``POST /elastic-kernels/api/kernels/{id}/keepalive``."""

    @web.authenticated
    @authorized
    async def post(self, kernel_id: str) -> None:
        await self.relay_once(f"/api/elastic/kernels/{kernel_id}/keepalive", "POST")


class DiagnosticsProxyHandler(_ProxyBase):
    """``GET /elastic-kernels/api/kernels/{id}/diagnostics``."""

    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        await self.relay_once(f"/api/elastic/kernels/{kernel_id}/diagnostics")


class StreamProxyHandler(_ProxyBase):
    """``GET /elastic-kernels/api/stream``: the gateway's event stream, chunk by chunk."""

    _closed: asyncio.Event | None = None

    @web.authenticated
    @authorized
    async def get(self) -> None:
        gateway = _gateway(self)
        closed = self._closed = asyncio.Event()
        started = False

        def forward(chunk: bytes) -> None:
            nonlocal started
            if closed.is_set():
                # The browser went away: failing the callback ends the gateway request too.
                raise StreamClosedError()
            if not started:
                started = True
                self.set_header("Content-Type", "text/event-stream; charset=utf-8")
                self.set_header("Cache-Control", "no-cache, no-transform")
                self.set_header("X-Accel-Buffering", "no")
            self.write(chunk)
            flushed = self.flush()
            flushed.add_done_callback(lambda f: f.cancelled() or f.exception())

        # A client of its own: a stream holds its connection for as long as the browser
        # listens, and must not take one of the shared client's few slots.
        client = AsyncHTTPClient(force_instance=True)
        request = _request(gateway, "/api/elastic/kernels/stream", streaming_callback=forward,
                           request_timeout=0)
        request.headers["Accept"] = "text/event-stream"
        fetch: asyncio.Future[t.Any] = asyncio.ensure_future(
            client.fetch(request, raise_error=False))
        ended: asyncio.Future[t.Any] = asyncio.ensure_future(closed.wait())
        try:
            await asyncio.wait({fetch, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            if not fetch.done():
                fetch.cancel()
            client.close()
        if closed.is_set():
            return
        response = fetch.result()
        if not started:  # the gateway refused (403, 501...): its JSON error, as it is
            self.set_status(response.code if response.code >= 400 else 502)
            body = response.body if response.code >= 400 else json.dumps(
                {"message": f"Gateway unreachable: {response.error}"}).encode()
            self.finish(body or b"{}")
            return
        try:
            self.finish(set_content_type="text/event-stream; charset=utf-8")
        except StreamClosedError:
            pass

    def on_connection_close(self) -> None:
        if self._closed is not None:
            self._closed.set()


def status_proxy_handlers(base_url: str) -> list[tuple[str, type[web.RequestHandler]]]:
    return [
        (url_path_join(base_url, "/elastic-kernels/api/status"), StatusProxyHandler),
        (url_path_join(base_url, "/elastic-kernels/api/stream"), StreamProxyHandler),
        (url_path_join(base_url, rf"/elastic-kernels/api/kernels/{_KERNEL_ID}/keepalive"),
         KeepaliveProxyHandler),
        (url_path_join(base_url, rf"/elastic-kernels/api/kernels/{_KERNEL_ID}/diagnostics"),
         DiagnosticsProxyHandler),
    ]
