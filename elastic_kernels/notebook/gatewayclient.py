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

The extension only acts when ``GatewayClient.url`` is set, and keeps a kernel websocket connection
class that someone else customised (it logs a warning then).

(``jupyter lab`` accepts the same options.)
"""

from __future__ import annotations

import functools
import mimetypes
import typing as t

from jupyter_server.auth.decorator import authorized
from jupyter_server.gateway.connections import GatewayWebSocketConnection
from jupyter_server.services.kernelspecs.handlers import kernel_name_regex
from jupyter_server.utils import url_path_join
from tornado import web
from traitlets import TraitError

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


class NoDelayGatewayWebSocketConnection(GatewayWebSocketConnectionHooks):
    """``GatewayWebSocketConnection`` with TCP_NODELAY towards the gateway and the browser."""

    async def connect(self) -> None:
        try:
            handler = self.websocket_handler
        except TraitError:  # used without a browser-facing handler
            handler = None
        # connect() runs from the handler's open(), i.e. after the browser's upgrade.
        if handler is not None and getattr(handler, "ws_connection", None) is not None:
            handler.set_nodelay(True)
        await super().connect()

    def on_connected(self) -> None:
        # Runs before any queued browser message is forwarded (it is the first callback on the
        # connect future), so every message to the gateway goes out without Nagle.
        protocol = getattr(self.ws, "protocol", None)
        if protocol is not None:
            protocol.set_nodelay(True)


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
