"""``ElasticGatewayApp``: the headless Jupyter server notebook servers use as ``--gateway-url``.

It *is* a ``jupyter_server.serverapp.ServerApp`` with the web surface cut down to what
jupyter_server's ``GatewayClient`` / ``GatewayKernelManager`` / ``GatewayKernelSpecManager``
call, so kernel management, token auth, culling, config files and kernel-manager hooks behave
exactly as in jupyter_server:

=====================================  ===========================================================
``GET /api``                           version (jupyter_server)
``GET /api/status``                    server status (jupyter_server)
``GET /api/kernelspecs[/{name}]``      kernel specs (jupyter_server)
``GET /kernelspecs/{name}/{file}``     kernel spec resources, e.g. logos (jupyter_server)
``GET|POST /api/kernels``              list / start ``{"name", "env"}`` (ours)
``GET|DELETE /api/kernels/{id}``       model / shut down (ours)
``POST /api/kernels/{id}/interrupt``   (ours)
``POST /api/kernels/{id}/restart``     (ours)
``WS /api/kernels/{id}/channels``      kernel messages (ours; TCP_NODELAY, fast nudge)
``GET /api/elastic/status``            gateway id, version, kernel and connection counts
``GET /api/elastic/kernels[/stream]``  each user's kernels' status, once or live (SSE)
``POST /api/elastic/kernels/{id}/keepalive``  activity on a kernel (statusstream.py)
``GET /api/elastic/kernels/{id}/diagnostics``  pod events, launcher log (diagnostics.py)
``GET /elastic/``                      the admin page (adminpage.py)
``GET /metrics``                       Prometheus text: kernels, websocket connections, ...
=====================================  ===========================================================

No contents, files, sessions, terminals, nbconvert or UI: the notebook server keeps those.
Server extensions found in the Jupyter config paths (JupyterLab, LSP, terminals...) are *not*
loaded; list one in ``ServerApp.jpserver_extensions`` explicitly if you really want it.

Command line (``elastic-kernels gateway ...`` calls :func:`main`)::

    --ip=127.0.0.1  --port=8888 (0: any free port)  --token=...  (or $ELASTIC_KERNELS_TOKEN)
    --kubeconfig=PATH (default $KUBECONFIG, else in-cluster)  --namespace=NS
    --log-level=INFO  --config=FILE  --kernel-manager-class=...  --gateway-id=...

The token is required by default.  Without one a random token is generated and printed once in
the startup line; a configured token is never printed or logged.  Prefer the environment variable
to ``--token``: command lines are visible to other users of the machine.

The kernel manager and kernel spec manager are ordinary ``ServerApp.kernel_manager_class`` and
``ServerApp.kernel_spec_manager_class`` traits.  Their defaults come from the class attributes
``ElasticGatewayApp.default_kernel_manager_class`` and ``default_kernel_spec_manager_class``
(kernels in pods: :class:`ElasticMappingKernelManager` and :class:`ElasticKernelSpecManager`;
the gateway tests swap in jupyter_server's local ones to test the serving layer alone).

Speed and robustness choices (see DESIGN §7):

* TCP_NODELAY on every kernel websocket after its upgrade (tornado re-enables Nagle after the
  101 response, which is what costs jupyter_server ~40 ms per message), and on accepted
  connections;
* the kernel websocket connection class is :class:`ElasticChannelsConnection`, whose readiness
  nudge retries after 10 ms instead of 0.5 s;
* a :class:`ZMQWakeupGuard` re-checks the streams of active kernels (activity within
  ``zmq_recheck_active_window``, or busy) every ``zmq_recheck_interval`` (0.25 s), and every
  kernel stream once per ``zmq_recheck_idle_interval`` (5 s) a slice per sweep, so a lost ZeroMQ
  wakeup cannot leave kernel output queued for ever and idle kernels cost the guard little;
* websocket frames above ``websocket_max_message_size`` (32 MiB) close that one connection with
  1009; HTTP bodies are capped at ``max_body_size`` (1 MiB; the API only takes small JSON);
* a request's headers must arrive within ``http_header_timeout`` (75 s) and its body within
  ``http_body_timeout`` (30 s); at most ``max_connections`` are held at once (half the open-file
  limit), ``max_websockets_per_user`` (64) kernel websockets per user, and the log lines a client
  can cause at will are rate-limited (httplimits.py).
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import secrets
import signal
import socket
import sys
import threading
import typing as t
from datetime import timedelta

from jupyter_core.application import JupyterApp, base_aliases, base_flags
from jupyter_core.utils import ensure_async
from jupyter_server.auth.identity import IdentityProvider
from jupyter_server.base.handlers import Template404
from jupyter_server.utils import url_path_join
from tornado.iostream import IOStream
from tornado.log import gen_log
from tornado.netutil import bind_sockets
from traitlets import Bool, Dict, Float, Int, List, Unicode, default

from elastic_kernels import __version__
from elastic_kernels.upstream import (
    HTTPServerHooks,
    ServerAppHooks,
    activity_stream,
    context_has_open_sockets,
    disown_context,
    isoformat,
    managed_kernels,
    offline_buffers,
    owns_context,
    pending_starts,
    utcnow,
)

from elastic_kernels.culling.gpusource import GpuUseSource
from elastic_kernels.culling.policy import CullingDefaults
from elastic_kernels.kube.connection import ClusterConnection
from elastic_kernels.provisioner.provisioner import ElasticKernelProvisioner
from elastic_kernels.leases import GatewayLease
from elastic_kernels.gateway.web import handlers as gateway_handlers
from elastic_kernels.gateway.web import statusstream
from elastic_kernels.gateway import redact
from elastic_kernels.gateway.web.auth import TOKEN_ENV, ElasticIdentityProvider
from elastic_kernels.gateway.web.bodylimit import limit_body
from elastic_kernels.gateway.web.httplimits import (
    ConnectionCap,
    UserSlots,
    add_accept_handler,
    default_max_connections,
    install_log_flood_filter,
    raise_open_files_limit,
)
from elastic_kernels.gateway.transport.connection import ElasticChannelsConnection
from elastic_kernels.gateway.web.ownership import KernelOwnership
from elastic_kernels.gateway.lifecycle.prepull import ImagePrepuller
from elastic_kernels.gateway.web.metrics import GatewayMetrics
from elastic_kernels.gateway.transport.zmqguard import ZMQWakeupGuard

if t.TYPE_CHECKING:
    from zmq.eventloop.zmqstream import ZMQStream

__all__ = ["ElasticGatewayApp", "NoDelayHTTPServer", "main"]

GATEWAY_ID_ENV = "ELASTIC_KERNELS_GATEWAY_ID"

gateway_aliases: dict[str, t.Any] = dict(base_aliases)
gateway_aliases.update(
    {
        "ip": "ElasticGatewayApp.ip",
        "port": "ElasticGatewayApp.port",
        "token": "IdentityProvider.token",
        "users-file": "ElasticIdentityProvider.users_file",
        "users-secret": "ElasticIdentityProvider.users_secret",
        "kubeconfig": "ElasticGatewayApp.kubeconfig",
        "namespace": "ElasticGatewayApp.namespace",
        "gateway-id": "ElasticGatewayApp.gateway_id",
        "base-url": "ElasticGatewayApp.base_url",
        "keyfile": "ElasticGatewayApp.keyfile",
        "certfile": "ElasticGatewayApp.certfile",
        "kernel-manager-class": "ElasticGatewayApp.kernel_manager_class",
        "kernel-spec-manager-class": "ElasticGatewayApp.kernel_spec_manager_class",
    }
)
gateway_flags: dict[str, t.Any] = dict(base_flags)
gateway_flags["debug"] = ({"Application": {"log_level": "DEBUG"}}, "Log at DEBUG level.")


class NoDelayHTTPServer(HTTPServerHooks):
    """An HTTPServer that disables Nagle's algorithm on every accepted connection.

    This only covers a connection until its first response: tornado switches Nagle off while it
    finishes each HTTP response and back *on* afterwards, including after the 101 that upgrades
    a websocket.  That is why the kernel websocket handler sets TCP_NODELAY again once open.

    It also holds at most ``cap.limit`` connections (a JSON 503 for one more) and pauses
    accepting, instead of spinning, when descriptors run out (httplimits.py).
    """

    cap: ConnectionCap | None = None

    def handle_stream(self, stream: IOStream, address: tuple[t.Any, ...]) -> None:
        if self.cap is not None and not self.cap.admit(self.open_connection_count):
            self.cap.refuse(stream, address)
            return
        stream.set_nodelay(True)
        super().handle_stream(stream, address)

    def accept_handler(self, sock: socket.socket, callback: t.Callable[[t.Any, t.Any], None]
                       ) -> t.Callable[[], None]:
        # An accept loop that pauses when descriptors run out, instead of spinning.
        return add_accept_handler(sock, callback, self.cap.log if self.cap is not None else gen_log)

    def start_request(self, server_conn: object, request_conn: t.Any) -> t.Any:
        # A body over max_body_size gets a JSON 413 instead of tornado's bare 400 (bodylimit.py).
        return limit_body(super().start_request(server_conn, request_conn), request_conn,
                          self.conn_params.max_body_size)


class ElasticGatewayApp(ServerAppHooks):
    """The elastic-kernels gateway (see the module docstring)."""

    name = "elastic-kernels-gateway"
    version = __version__
    description = "Headless Jupyter kernel gateway for elastic-kernels."
    examples = "elastic-kernels gateway --port=8888 --namespace=jupyter"

    # The one place to switch the kernel backend (the lead points these at the Kubernetes ones).
    default_kernel_manager_class = (
        "elastic_kernels.gateway.lifecycle.kernelmanager.ElasticMappingKernelManager"
    )
    default_kernel_spec_manager_class = "elastic_kernels.kernelspecs.ElasticKernelSpecManager"
    default_kernel_websocket_connection_class = (
        "elastic_kernels.gateway.transport.connection.ElasticChannelsConnection"
    )

    # jupyter_server services we keep; the kernel endpoints are ours (gateway_handlers).
    default_services = ("api", "kernelspecs")  # type: ignore[assignment] # upstream: a 13-tuple

    subcommands: dict[str, t.Any] = {}
    classes = [*ServerAppHooks.classes, IdentityProvider, ElasticIdentityProvider,
               ElasticChannelsConnection, ClusterConnection, CullingDefaults, GpuUseSource,
               GatewayLease,
               ElasticKernelProvisioner, KernelOwnership, ImagePrepuller]
    aliases = Dict(gateway_aliases)
    flags = Dict(gateway_flags)

    ip = Unicode(
        "127.0.0.1",
        config=True,
        help="Address to listen on (loopback by default; 0.0.0.0 for all interfaces).",
    )

    port = Int(8888, config=True, help="Port to listen on (0: any free port).")

    kubeconfig = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Path of the kubeconfig to use (default: $KUBECONFIG, else in-cluster config).",
    )

    @default("kubeconfig")
    def _default_kubeconfig(self) -> str | None:
        return os.environ.get("KUBECONFIG") or None

    namespace = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Namespace of kernels and kernel specs (default: the kubeconfig context's).",
    )

    gateway_id = Unicode(
        config=True,
        help=f"Identity of this gateway replica (default: ${GATEWAY_ID_ENV}, else host-random).",
    )

    @default("gateway_id")
    def _default_gateway_id(self) -> str:
        return os.environ.get(GATEWAY_ID_ENV) or f"{socket.gethostname()}-{secrets.token_hex(4)}"

    websocket_max_message_size = Int(
        32 * 1024 * 1024,
        config=True,
        help="Largest websocket message (bytes) a client may send; larger ones close "
        "that connection with status 1009.",
    )

    zmq_recheck_interval = Float(
        0.25,
        config=True,
        help="Seconds between re-checks of active kernels' ZeroMQ streams for input whose "
        "wakeup was lost; such input waits at most one interval (0 disables the guard).",
    )

    zmq_recheck_active_window = Float(
        60.0,
        config=True,
        help="A kernel counts as active for the ZeroMQ re-check (every zmq_recheck_interval) "
        "while busy and for this many seconds after its last activity.",
    )

    zmq_recheck_idle_interval = Float(
        5.0,
        config=True,
        help="Seconds over which the streams of every kernel, active or not, are re-checked "
        "once, a slice per zmq_recheck_interval; a lost wakeup on a kernel not counted as "
        "active waits about this long, at most twice this when kernels come and go.",
    )

    http_header_timeout = Float(
        75.0,
        config=True,
        help="Seconds a connection may take to send a request's headers, counted from when it "
        "opened or its previous response ended (so also how long an idle keep-alive connection "
        "stays open). Longer than the 60 s idle timeout of common proxies, so they close idle "
        "connections first. Upgraded kernel websockets are not affected.",
    )

    http_body_timeout = Float(
        30.0,
        config=True,
        help="Seconds a request may take to send its body (at most max_body_size, 1 MiB).",
    )

    max_connections = Int(
        0,
        config=True,
        help="Connections held at once, HTTP and kernel websockets; one more is answered 503 "
        "and closed. 0: half the process's open-file limit (the rest is for kernel sockets).",
    )

    max_websockets_per_user = Int(
        64,
        config=True,
        help="Kernel websockets one user (admins included) may have open; one more is refused "
        "with a JSON 429 before the upgrade (0: no limit).",
    )

    log_flood_burst = Int(
        10,
        config=True,
        help="Log lines of each kind a client can cause at will (malformed requests, body "
        "timeouts, TLS errors, refused connections...) per log_flood_window; the rest are "
        "counted in one line (0: log them all).",
    )

    log_flood_window = Float(60.0, config=True, help="Seconds of the log_flood_burst budget.")

    client_env_allowlist = List(
        Unicode(),
        config=True,
        help="Names from a start request's 'env' passed to the kernel besides KERNEL_*.",
    )

    process_env_allowlist = List(
        Unicode(),
        default_value=["PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"],
        config=True,
        help="Names from the gateway's own environment passed to the kernels it starts.",
    )

    install_signal_handlers = Bool(
        True,
        config=True,
        help="Stop on SIGTERM/SIGINT (off when the app is embedded, e.g. in tests).",
    )

    # ---- jupyter_server defaults changed for a headless gateway -------------------------

    @default("ip")
    def _default_ip(self) -> str:
        return "127.0.0.1"

    @default("port")
    def _default_port(self) -> int:
        return 8888

    @default("port_retries")
    def _default_port_retries(self) -> int:
        # A gateway's URL is configured elsewhere; silently moving to another port is wrong.
        return 0

    @default("kernel_manager_class")
    def _default_kernel_manager_class(self) -> str:
        return self.default_kernel_manager_class

    @default("kernel_spec_manager_class")
    def _default_kernel_spec_manager_class(self) -> str:
        return self.default_kernel_spec_manager_class

    @default("kernel_websocket_connection_class")
    def _default_kernel_websocket_connection_class(self) -> str:
        return self.default_kernel_websocket_connection_class

    @default("session_manager_class")
    def _default_session_manager_class(self) -> str:
        return "jupyter_server.services.sessions.sessionmanager.SessionManager"

    @default("identity_provider_class")
    def _default_identity_provider_class(self) -> str:
        return "elastic_kernels.gateway.web.auth.ElasticIdentityProvider"

    @default("open_browser")
    def _default_open_browser(self) -> bool:
        return False

    @default("cookie_secret")
    def _default_cookie_secret(self) -> bytes:
        # Cookies only remember a token login; a per-process secret avoids writing one to disk.
        return os.urandom(32)

    @default("max_body_size")
    def _default_max_body_size(self) -> int:
        return 1024 * 1024

    # ---- state ---------------------------------------------------------------------------

    def __init__(self, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self.open_websockets: set[t.Any] = set()
        """Open kernel websocket handlers (for metrics, status and shutdown)."""
        self.kernel_start_failures = 0
        #: /metrics: a registry of this app's own (metrics.py), not prometheus_client's global one.
        self.gateway_metrics = GatewayMetrics(self)
        self._listen_sockets: list[socket.socket] = []
        self._accepting = False
        self._zmq_guard = ZMQWakeupGuard(self._kernel_streams, 0.0,
                                         active=self._active_kernel_streams)
        #: Kernels the guard treats as active (see _active_kernel_streams), and the manager's
        #: last_kernel_activity when kernels were last scanned for activity.
        self._active_kernels: dict[str, t.Any] = {}
        self._activity_mark: t.Any = None
        self._stop_redacting: t.Callable[[], None] = lambda: None

    def _configure_logging(self) -> None:
        super()._configure_logging()
        # traitlets leaves the app's logger at DEBUG and filters in its handlers, so every
        # debug call in jupyter_server's hot paths (one per kernel message in its activity
        # watcher) builds a LogRecord, formats it and has redact.py scrub it, only for the
        # handler to drop it. The scrub checks every kernel's key, so that cost per message grows
        # with the kernels held. The logger now lets through what at least one of its handlers
        # would emit, and nothing less.
        levels = [h.level for h in self.log.handlers]
        if levels and all(levels):
            self.log.setLevel(min(levels))

    # ---- initialisation ------------------------------------------------------------------

    def init_configurables(self) -> None:
        # The cluster connection is shared by the kernelspec manager and every provisioner;
        # configure it from our flags before they exist.
        ClusterConnection.instance(parent=self, kubeconfig=self.kubeconfig,
                                   namespace=self.namespace)
        super().init_configurables()
        km = self.kernel_manager
        if hasattr(km, "gateway_id"):
            km.gateway_id = self.gateway_id
        # The kernel manager's queue and culler report their events to our metrics.
        if hasattr(km, "gpu_queue"):
            km.gpu_queue.on_wait_ended = self.gateway_metrics.gpu_wait_ended
        if hasattr(km, "culler"):
            km.culler.on_cull = self.gateway_metrics.kernel_culled

    async def before_post_start(self) -> None:
        """Start the shared watches (and whatever the kernel manager runs) before serving."""
        for component in (self.kernel_spec_manager, self.kernel_manager, self.identity_provider):
            start = getattr(component, "start_watching", None)
            if start is None:
                continue
            try:
                await start()
            except Exception as e:  # the gateway keeps serving; starts answer 503 meanwhile
                self.log.error("Cannot watch the cluster yet (%s); retrying in the background",
                               e)
        # The kernel status stream listens from now on, so its list of culls covers them all.
        await statusstream.start_hub(self.web_app.settings)

    def find_server_extensions(self) -> None:
        """Load only explicitly configured extensions (see the module docstring)."""

    def init_signal(self) -> None:
        if not self.install_signal_handlers:
            return
        # No interactive "shut down? (y/n)" on SIGINT: this is a service.
        signal.signal(signal.SIGTERM, self.signal_stop)
        signal.signal(signal.SIGINT, self.signal_stop)

    def init_webapp(self) -> None:
        self.tornado_settings["websocket_max_message_size"] = self.websocket_max_message_size
        super().init_webapp()
        # Rules added this way are matched before the ones the web app was built with, so ours
        # replace jupyter_server's for the same paths (e.g. /metrics).
        # jupyter_server answers unknown paths with an HTML page; API clients want JSON.
        for rule in self.web_app.wildcard_router.rules:
            if rule.target is Template404:
                rule.target = gateway_handlers.NotFoundHandler
        self.web_app.add_handlers(
            ".*$",
            [
                (url_path_join(self.base_url, pattern), handler)
                for pattern, handler in gateway_handlers.default_handlers()
            ],
        )

    def init_httpserver(self) -> None:
        self.websocket_slots = UserSlots(self.max_websockets_per_user)
        install_log_flood_filter(self.log, self.log_flood_burst,
                                 self.log_flood_window)
        if self.sock:
            super().init_httpserver()
            return
        server = self.http_server = NoDelayHTTPServer(
            self.web_app,
            ssl_options=self.ssl_options,
            xheaders=self.trust_xheaders,
            max_body_size=self.max_body_size,
            max_buffer_size=max(self.max_buffer_size, self.websocket_max_message_size + 65536),
            # tornado's idle_connection_timeout is its header timeout; neither applies once a
            # websocket is upgraded.
            idle_connection_timeout=self.http_header_timeout or None,
            body_timeout=self.http_body_timeout or None,
        )
        server.cap = ConnectionCap(
            self.max_connections or default_max_connections(),
            lambda: len(self.open_websockets), self.log)
        try:
            # Bind now so that --port=0 knows its port before anything is logged or returned,
            # with no window in which another process could take it.
            self._listen_sockets = bind_sockets(self.port, self.ip or None)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                self.log.critical("Cannot listen on %s:%s: the port is in use", self.ip, self.port)
            else:
                self.log.critical("Cannot listen on %s:%s: %s", self.ip, self.port, e)
            self.exit(1)
        self.port = self._listen_sockets[0].getsockname()[1]
        self.io_loop.add_callback(self._start_accepting)

    def _start_accepting(self) -> None:
        if self._accepting:
            return
        self._accepting = True
        if self._listen_sockets:
            self.http_server.add_sockets(self._listen_sockets)
        self._zmq_guard.interval = self.zmq_recheck_interval
        if self.zmq_recheck_interval > 0:
            self._zmq_guard.idle_sweeps = max(
                1, math.ceil(self.zmq_recheck_idle_interval / self.zmq_recheck_interval))
        self._zmq_guard.log = self.log
        self._zmq_guard.start()

    # ---- running -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL clients use (without any token)."""
        host = self.ip or "localhost"
        if host in ("0.0.0.0", "::"):  # noqa: S104 - only for display
            host = socket.gethostname()
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.certfile else "http"
        return f"{scheme}://{host}:{self.port}{self.base_url}"

    def startup_line(self) -> str:
        """The one startup log line: URL, identity, backend; the token only if we generated it."""
        provider = self.identity_provider
        describe = getattr(provider, "describe", None)
        if describe is not None:
            auth = describe()
        elif not provider.token:
            auth = "authentication DISABLED (empty token)"
        elif provider.token_generated:
            auth = f"generated token: {provider.token} (set {TOKEN_ENV} to choose one)"
        else:
            auth = "token required"
        km_class = type(self.kernel_manager)
        return (
            f"elastic-kernels gateway {__version__} ({self.gateway_id}) serving {self.url} "
            f"[{auth}; kernel manager {km_class.__module__}.{km_class.__qualname__}]"
        )

    def start_app(self) -> None:
        # From here every log record through the root's or our handlers is scrubbed of our tokens
        # and kernel keys (redact.py); stopping detaches the filter again.
        self._stop_redacting()
        self._stop_redacting = redact.install(redact.gateway_secrets(self), [self.log])
        raise_open_files_limit()
        JupyterApp.start(self)
        # No server-info or browser-open files: they would hold the token in plain text, and a
        # gateway has no browser to open.
        if self.identity_provider.token_generated:
            self.log.warning(self.startup_line())
        else:
            self.log.info(self.startup_line())

    async def start_serving(self) -> None:
        """Start serving on the running event loop (for embedding; ``start()`` runs its own)."""
        self._start_accepting()
        self.start_app()
        await self.post_start()

    async def stop_serving(self) -> None:
        """Stop serving and clean up, on the running event loop (the embedded ``stop()``)."""
        await self.stop_and_cleanup()

    async def before_cleanup(self) -> None:
        self._zmq_guard.stop()
        statusstream.close_hub(self.web_app.settings)  # ends every status stream
        for handler in list(self.open_websockets):
            try:
                handler.close(1001, "gateway stopping")
            except Exception:  # noqa: BLE001 - best effort while stopping
                self.log.debug("closing websocket failed", exc_info=True)

    async def after_cleanup(self) -> None:
        for sock in self._listen_sockets:
            sock.close()
        self._listen_sockets = []
        self._stop_redacting()

    async def cleanup_kernels(self) -> None:
        # jupyter_server's shutdown_all raises (and the server then never stops) when an earlier
        # start failed: jupyter_client leaves the failed id in _pending_kernels.  Forget those
        # first, and never let one kernel's shutdown error abort stopping the gateway.
        self.forget_failed_starts()
        km = self.kernel_manager
        try:
            if getattr(km, "shutdown_kernels_on_exit", True):
                await super().cleanup_kernels()
            else:
                # Kernels live in pods and outlive this process; another gateway re-attaches.
                n = len(km.list_kernel_ids())
                self.log.info("Leaving %d kernel%s running for the next gateway", n,
                              "" if n == 1 else "s")
                await ensure_async(t.cast(t.Any, km).detach_all())  # ours only
        except Exception:
            self.log.exception("Shutting down kernels failed")
        finally:
            for component in (km, self.identity_provider):
                stop = getattr(component, "stop_watching", None)
                if stop is not None:
                    await stop()
            await ClusterConnection.reset()
            await release_zmq_context(km, self.log)

    def close_kernel_websockets(self, kernel_id: str, reason: str) -> None:
        """Close a kernel's websockets saying why (e.g. it was reclaimed for a waiting kernel).

        The close reason is all a browser sees before the kernel disappears; websocket close
        reasons are limited to 123 bytes.
        """
        text = reason.encode()[:123].decode(errors="ignore")
        for handler in list(self.open_websockets):
            if getattr(handler, "kernel_id", None) == kernel_id:
                try:
                    handler.close(4000, text)
                except Exception:  # noqa: BLE001 - closing is best effort
                    self.log.debug("closing websocket failed", exc_info=True)

    def forget_failed_starts(self) -> None:
        """Drop start attempts that failed from the kernel manager's pending table."""
        km = getattr(self, "kernel_manager", None)
        pending = pending_starts(km)
        kernels = managed_kernels(km)
        for kernel_id, task in list(pending.items()):
            if kernel_id not in kernels and getattr(task, "done", lambda: False)():
                pending.pop(kernel_id, None)

    # ---- what handlers ask the app -------------------------------------------------------

    def kernel_env(self, client_env: t.Mapping[str, str]) -> dict[str, str]:
        """The environment of a kernel the gateway starts (passed as ``env`` to start_kernel).

        The allowed part of the client's env (``KERNEL_*`` and ``client_env_allowlist``) over the
        allowlisted part of the gateway's own environment.  It is passed even when the request
        has no env: jupyter_client would otherwise give a local kernel the gateway's whole
        environment, token and cluster credentials included.
        """
        env = {k: os.environ[k] for k in self.process_env_allowlist if k in os.environ}
        env.update(gateway_handlers.filter_env(client_env, self.client_env_allowlist))
        return env

    def _kernel_streams(self) -> t.Iterator[ZMQStream]:
        """Every ZeroMQ stream the gateway reads, for the wakeup guard."""
        for handler in list(self.open_websockets):
            connection = getattr(handler, "connection", None)
            streams = getattr(connection, "channels", None) or {}
            yield from streams.values()
        km = getattr(self, "kernel_manager", None)
        if km is None:
            return
        for kernel_id in list(km.list_kernel_ids()):
            try:
                kernel = km.get_kernel(kernel_id)
            except KeyError:
                continue
            activity = activity_stream(kernel)
            if activity is not None:
                yield activity
        for buffer in list(offline_buffers(km).values()):
            yield from (buffer.get("channels") or {}).values()

    def _active_kernel_streams(self) -> list[ZMQStream]:
        """The streams of kernels active lately or busy: the guard re-checks these every sweep.

        Activity is jupyter_server's: every iopub message a kernel sends updates its
        ``last_activity`` and the manager's ``last_kernel_activity``.  Kernels are only scanned
        when the latter moved since the previous sweep (attribute reads, no ZeroMQ calls), so
        with every kernel idle a sweep costs nothing per kernel held; open websockets are
        walked to find the active kernels' channels.
        """
        km = getattr(self, "kernel_manager", None)
        kernels = managed_kernels(km)
        active = self._active_kernels
        cutoff = utcnow() - timedelta(seconds=self.zmq_recheck_active_window)
        mark = getattr(km, "last_kernel_activity", None)
        if mark != self._activity_mark:
            self._activity_mark = mark
            for kernel_id, kernel in list(kernels.items()):
                last = getattr(kernel, "last_activity", None)
                if last is not None and last >= cutoff:
                    active[kernel_id] = kernel
        for kernel_id, kernel in list(active.items()):
            last = getattr(kernel, "last_activity", None)
            if kernels.get(kernel_id) is not kernel or (
                (last is None or last < cutoff)
                and getattr(kernel, "execution_state", None) != "busy"
            ):
                del active[kernel_id]
        if not active:
            return []
        streams: list[ZMQStream] = []
        for handler in list(self.open_websockets):
            if getattr(handler, "kernel_id", None) in active:
                connection = getattr(handler, "connection", None)
                streams.extend((getattr(connection, "channels", None) or {}).values())
        buffers = offline_buffers(km)
        for kernel_id, kernel in active.items():
            activity = activity_stream(kernel)
            if activity is not None:
                streams.append(activity)
            buffer = buffers.get(kernel_id)  # a defaultdict: .get adds nothing
            if buffer:
                streams.extend((buffer.get("channels") or {}).values())
        return streams

    async def elastic_status(self) -> dict[str, t.Any]:
        """``/api/elastic/status``; a kernel manager's ``elastic_status()`` adds its own keys."""
        km = self.kernel_manager
        status: dict[str, t.Any] = {
            "version": __version__,
            "gateway_id": self.gateway_id,
            "kernels": len(km.list_kernel_ids()),
            "connections": len(self.open_websockets),
            "started": isoformat(self.web_app.settings["started"]),
        }
        extra = getattr(km, "elastic_status", None)
        if extra is not None:
            status.update(await ensure_async(extra()))
        return status


#: ZeroMQ contexts left to the process's exit (see release_zmq_context): never collected.
_LEFT_TO_EXIT: list[t.Any] = []


async def release_zmq_context(km: t.Any, log: t.Any, wait: float = 2.0) -> None:
    """End the ZeroMQ context the kernel manager made, without ever hanging the process.

    jupyter_client's ``MultiKernelManager.__del__`` destroys the context it created, and
    ``zmq_ctx_term`` waits for *every* socket of that context to close, including sockets opened
    through another Python wrapper of the same context (pyzmq's ``destroy`` closes only the
    ones it made). One such socket left open makes the garbage collector block the process for
    ever: a gateway that never exits on SIGTERM, or a test run that stops at a random test.
    So the context is destroyed here, in a daemon thread given ``wait`` seconds, and
    ``_created_context`` (jupyter_client's flag, a private name; it can go when jupyter_client's
    ``__del__`` stops calling ``term``) is cleared so that ``__del__`` leaves it alone.
    """
    context = getattr(km, "context", None)
    if not owns_context(km) or context is None or context.closed:
        return
    disown_context(km)
    # A socket of ours still open belongs to a ZMQStream that will close it itself; closing it
    # from under the stream could unregister another socket's handler that reuses its fd. Such a
    # context is left to the process's exit (pyzmq's _sockets: the sockets this wrapper made).
    if context_has_open_sockets(context):
        log.debug("The kernel manager's ZeroMQ context still has sockets open; not ending it")
        # Held for ever: if the garbage collector met it, pyzmq's Context.__del__ would term it
        # in whatever thread collected, and term waits for those sockets (a CI run hung so).
        _LEFT_TO_EXIT.append(context)
        return
    done = threading.Event()

    def destroy() -> None:
        context.destroy(linger=0)
        done.set()

    threading.Thread(target=destroy, name="zmq-context-destroy", daemon=True).start()
    if not await asyncio.get_running_loop().run_in_executor(None, done.wait, wait):
        log.warning("The kernel manager's ZeroMQ context still had open sockets after %.0f s; "
                    "left to the process's exit", wait)


def main(argv: list[str] | None = None) -> int:
    """Run the gateway until it is stopped (``elastic-kernels gateway ARGS``)."""
    ElasticGatewayApp.launch_instance(argv=sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
