"""Notebook-server side: talk to the gateway without Nagle delays.

A notebook server (or JupyterLab) started with ``--gateway-url`` relays each kernel websocket
from the browser to the gateway through jupyter_server's ``GatewayWebSocketConnection``.  Both of
its sockets carry small kernel messages with Nagle's algorithm on:

* the client websocket to the gateway: tornado enables TCP_NODELAY for the HTTP request and turns
  it off again when the request is written, before the upgrade, so the upgraded socket has Nagle on;
* the browser-facing websocket: tornado turns Nagle back on after the 101 response, and
  jupyter_server's ``KernelWebsocketHandler`` never calls ``set_nodelay``.

Each small message then waits for the peer's delayed ACK (~40 ms on Linux) on each hop.
:class:`NoDelayGatewayWebSocketConnection` sets TCP_NODELAY on both.

Configure the notebook server with **either** the trait (jupyter_server >= 2.0)::

    jupyter server --gateway-url=http://GATEWAY:8888 \\
        --GatewayClient.auth_token=$ELASTIC_KERNELS_TOKEN \\
        --ServerApp.kernel_websocket_connection_class=elastic_kernels.notebook.NoDelayGatewayWebSocketConnection

or (recommended) the server extension in this module, which swaps the class in when a gateway is
configured (and leaves a non-gateway server alone) and also makes the gateway's error messages
readable: jupyter_server builds gateway errors as ``HTTPError(code, "Error from Gateway: [%s] %s.
...", message, reason)`` but its API handlers show only the unformatted template, so without the
extension a user whose kernel cannot start reads "Error from Gateway: [%s] %s" instead of, say,
"GPU quota exceeded"::

    jupyter server --gateway-url=... \\
        --ServerApp.jpserver_extensions=elastic_kernels.notebook=True

or in ``jupyter_server_config.py``::

    c.ServerApp.jpserver_extensions = {"elastic_kernels.notebook": True}
    c.GatewayClient.url = "http://GATEWAY:8888"
    c.GatewayClient.auth_token = os.environ["ELASTIC_KERNELS_TOKEN"]

**One connection, two legs.** Upstream's relay outlives either of its legs, and loses messages
both ways. When the browser leaves while the gateway leg is still connecting, it cancels the
connect future, which stops nothing: the gateway leg connects and stays open on the gateway under
the browser's session id, until a later connection of that session replaces it as stale. If that
orphan reaches the gateway *after* the browser's reconnection (JupyterLab opens and at once
closes a kernel's first websocket; on a loaded machine the two handshakes can cross), the
gateway replaces the live connection instead, and its ``kernel_info`` reply is lost. When the
gateway leg closes (that, a gateway restart or rollout), upstream reconnects it by itself a
second or more later while the browser stays connected, and drops what the browser sends in the
gap; a reply lost so leaves JupyterLab showing "Unknown" forever. Here the gateway leg of a
departed browser is closed as soon as it connects, and a gateway leg that fails or closes
closes the browser's leg (code 1011, with the reason): the browser's client reconnects (through
the Service, to a live gateway replica), the gateway replays what it buffered for the session,
and the client asks ``kernel_info`` again, so its kernel state is right.

**No secret in the log.** jupyter_server's gateway client logs the arguments of every kernel
start at INFO, the notebook server's whole environment among them; under JupyterHub that holds
the user's API token. The extension scrubs this server's token, its gateway token and every
secret-named environment variable from the server's log records (:mod:`elastic_kernels.redaction`).

The extension only acts when ``GatewayClient.url`` is set, and keeps a kernel websocket connection
class that someone else customised (it logs a warning then).

(``jupyter lab`` accepts the same options.)
"""

from __future__ import annotations

import functools
import mimetypes
import os
import typing as t
import weakref

from jupyter_server.auth.decorator import authorized
from jupyter_server.gateway.connections import GatewayWebSocketConnection
from jupyter_server.services.kernelspecs.handlers import kernel_name_regex
from jupyter_server.utils import url_path_join
from tornado import web
from traitlets import TraitError

from elastic_kernels import redaction
from elastic_kernels.kernelspec_handlers import InMemoryResourceHandler
from elastic_kernels.notebook.statusproxy import status_proxy_handlers
from elastic_kernels.upstream import (
    GatewayWebSocketConnectionHooks,
    http_error_text,
    patch_gateway_request,
)

__all__ = [
    "NoDelayGatewayWebSocketConnection",
    "_jupyter_server_extension_points",
    "_load_jupyter_server_extension",
]

_CLASS_PATH = "elastic_kernels.notebook.NoDelayGatewayWebSocketConnection"
#: The browser's close code when its gateway leg ended first (RFC 6455: "an unexpected
#: condition prevented the server from fulfilling the request"); every Jupyter client reconnects.
GATEWAY_LEG_LOST = 1011
#: A close frame's reason is at most 123 bytes.
CLOSE_REASON_BYTES = 123


class NoDelayGatewayWebSocketConnection(GatewayWebSocketConnectionHooks):
    """``GatewayWebSocketConnection`` with TCP_NODELAY towards the gateway and the browser, and
    a gateway leg that lives and dies with the browser's (see "One connection, two legs")."""

    async def connect(self) -> None:
        handler = self._browser_handler()
        # connect() runs from the handler's open(), i.e. after the browser's upgrade.
        if handler is not None and getattr(handler, "ws_connection", None) is not None:
            handler.set_nodelay(True)
        await super().connect()

    def _browser_handler(self) -> t.Any:
        try:
            return self.websocket_handler
        except TraitError:  # used without a browser-facing handler
            return None

    def disconnect(self) -> None:  # type: ignore[override] # sync, as GatewayWebSocketConnection
        """The browser left. A gateway leg still connecting is left to finish and closed in
        :meth:`gateway_connection_done`: cancelling its future, as upstream does, stops nothing
        but our view of it, and the connection stays open on the gateway under this session."""
        self.disconnected = True
        if self.ws is not None:
            self.ws.close()

    def gateway_connection_done(self, fut: t.Any) -> None:
        if self.disconnected:
            if not fut.cancelled() and fut.exception() is None:
                fut.result().close()
            return
        error = fut.exception() if not fut.cancelled() else None
        if fut.cancelled() or error is not None:
            self.log.warning("Kernel %s: could not connect to the gateway: %s", self.kernel_id,
                             error or "cancelled")
            self._close_browser(f"could not connect to the gateway: {error or 'cancelled'}")
            return
        self.ws = fut.result()
        self.retry = 0
        # Before any queued browser message is forwarded (this is the first callback on the
        # connect future), so every message to the gateway goes out without Nagle.
        protocol = getattr(self.ws, "protocol", None)
        if protocol is not None:
            protocol.set_nodelay(True)

    async def relay_from_gateway(self) -> None:
        ws = self.ws
        if ws is None:  # the handshake failed: gateway_connection_done closed the browser's leg
            return
        while not self.disconnected:
            try:
                message = await ws.read_message()
            except Exception as e:  # noqa: BLE001 - a broken leg reads as a closed one
                self.log.warning("Kernel %s: reading from the gateway failed: %s",
                                 self.kernel_id, e)
                message = None
            if message is None:
                break
            self.handle_outgoing_message(message.decode("utf-8") if isinstance(message, bytes)
                                         else message)
        if not self.disconnected:
            why = f"the gateway closed the connection ({ws.close_code} {ws.close_reason or ''})"
            self.log.warning("Kernel %s: %s", self.kernel_id, why.rstrip())
            self._close_browser(why)

    def _close_browser(self, why: str) -> None:
        """Close the browser's leg so that its client reconnects: a new gateway leg, and the
        client's own ``kernel_info`` request to learn the kernel's state again."""
        self.disconnected = True
        handler = self._browser_handler()
        if handler is not None and getattr(handler, "ws_connection", None) is not None:
            handler.close(GATEWAY_LEG_LOST, why.encode("utf-8")[:CLOSE_REASON_BYTES].decode(
                "utf-8", "ignore"))


def notebook_server_secrets(serverapp: t.Any) -> redaction.SecretSource:
    """What a notebook server in front of the gateway must never log: its own token, its
    gateway token, and its environment's secret-named variables (``JUPYTERHUB_API_TOKEN``)."""
    ref = weakref.ref(serverapp)
    # Read once: the environment is the process's from its start (the tokens may be set later).
    from_env = redaction.secret_env_values(os.environ)

    def source() -> list[str]:
        app = ref()
        if app is None:
            return []
        values = list(from_env)
        token = getattr(getattr(app, "identity_provider", None), "token", None)
        gateway = getattr(app, "gateway_config", None)
        for value in (token, getattr(gateway, "auth_token", None)):
            if isinstance(value, str) and value:
                values.append(value)
        return values

    return source


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": __name__}]


def _with_readable_errors(request: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    """Wrap ``gateway_request`` so its HTTPErrors carry their formatted text (see above)."""

    @functools.wraps(request)
    async def gateway_request(endpoint: str, **kwargs: t.Any) -> t.Any:
        try:
            return await request(endpoint, **kwargs)
        except web.HTTPError as e:
            if not e.args:
                raise
            raise web.HTTPError(e.status_code, http_error_text(e), reason=e.reason) from e

    return gateway_request


class GatewayKernelSpecResourceHandler(InMemoryResourceHandler):
    """Kernelspec resources from the gateway only; 404 when it has none.

    Upstream asks the gateway first and, when the gateway says 404, falls back to reading the
    notebook server's own disk with the gateway's kernelspec as if it were a local one, which
    fails with a 500 (a gateway kernelspec is a dict, without ``resource_dir``).
    """

    @web.authenticated
    @authorized
    async def get(  # type: ignore[override] # upstream's signature, not StaticFileHandler's
            self, kernel_name: str, path: str, include_body: bool = True) -> None:
        ksm: t.Any = self.kernel_spec_manager  # a GatewayKernelSpecManager
        data = await ksm.get_kernel_spec_resource(kernel_name, path)
        if data is None:
            raise web.HTTPError(404, "Kernel spec %s has no resource %r", kernel_name, path[:100])
        self.serve_bytes(data, mimetypes.guess_type(path)[0] or "application/octet-stream",
                         include_body)


def _load_jupyter_server_extension(serverapp: t.Any) -> None:
    """Use :class:`NoDelayGatewayWebSocketConnection`, readable errors, resources only from
    the gateway, pass the notebook's path (``JPY_SESSION_NAME``) to the kernel, and relay the
    gateway's kernel status (:mod:`.statusproxy`)."""
    gateway = getattr(serverapp, "gateway_config", None)
    if gateway is None or not getattr(gateway, "gateway_enabled", False):
        serverapp.log.info("%s: no gateway configured; nothing to do", __name__)
        return
    patch_gateway_request(_with_readable_errors)
    # jupyter_server's GatewayKernelManager logs each start's arguments at INFO, and with them
    # this server's whole environment: its token, the gateway token, a JupyterHub API token.
    redaction.install(notebook_server_secrets(serverapp), [serverapp.log])
    # GatewayKernelManager sends only KERNEL_* and allowed_envs; the gateway passes the
    # notebook's path on to the kernel (jupyter_server sets it for local kernels).
    allowed = [name for name in gateway.allowed_envs.split(",") if name]
    if "JPY_SESSION_NAME" not in allowed:
        gateway.allowed_envs = ",".join([*allowed, "JPY_SESSION_NAME"])
    base_url = serverapp.web_app.settings.get("base_url", "/")
    serverapp.web_app.add_handlers(".*$", [(
        url_path_join(base_url, rf"/kernelspecs/{kernel_name_regex}/(?P<path>.*)"),
        GatewayKernelSpecResourceHandler,
    ), *status_proxy_handlers(base_url)])
    current = serverapp.kernel_websocket_connection_class
    if isinstance(current, type) and issubclass(current, NoDelayGatewayWebSocketConnection):
        return
    if current is not GatewayWebSocketConnection:
        serverapp.log.warning(
            "%s: keeping the customised kernel websocket connection class %s",
            __name__,
            getattr(current, "__qualname__", current),
        )
        return
    serverapp.kernel_websocket_connection_class = NoDelayGatewayWebSocketConnection
    # The handlers read the class from the web app's settings at request time.
    serverapp.web_app.settings["kernel_websocket_connection_class"] = (
        NoDelayGatewayWebSocketConnection
    )
    serverapp.log.info("%s: kernel websockets use %s", __name__, _CLASS_PATH)
