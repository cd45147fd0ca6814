"""The one door to private names of jupyter_server, jupyter_client, tornado and pyzmq.

The gateway is jupyter_server with kernels in pods, and a few of the things it must do have no
public API upstream: count a kernel's websockets, find the stream jupyter_server's activity
watcher reads, hook ServerApp's start and stop, stop a kernel's control socket when detaching.
Every such access is here, and nowhere else (``tests/test_upstream_door.py`` scans the package
for private upstream names outside this module), so that an upgrade of jupyter_server or
jupyter_client is checked against one file: each accessor says what it relies on and when it
can go. The supported range is pinned in ``setup.cfg`` (``jupyter_server >=2.14,<3``,
``jupyter_client >=8.6,<9``) and CI runs the suite on its lowest and newest ends.

Two shapes:

* functions that read or change one private attribute of an upstream object (a kernel manager,
  a session, a tornado stream), named for what they mean to us;
* ``*Hooks`` base classes for our subclasses of upstream classes. Each overrides the private
  method upstream calls and forwards to a public method of ours with the same contract, so the
  subclass overrides a name we own. The defaults do what upstream did.

Callers: ``gateway.app`` (ServerApp and HTTPServer hooks, the ZeroMQ context),
``gateway.lifecycle`` (kernel tables, activity streams, the restarter), ``gateway.transport``
(session digests, offline buffers, websocket write buffers), ``gateway.web`` (error text, the
default token), ``notebook`` (the gateway websocket connection).
"""

from __future__ import annotations

import typing as t
from collections.abc import Callable, Iterable

import zmq
from jupyter_client.ioloop import AsyncIOLoopKernelManager, AsyncIOLoopKernelRestarter
from jupyter_client.session import Session
from jupyter_server._tz import isoformat, utcnow
from jupyter_server.auth.identity import IdentityProvider
from jupyter_server.gateway.connections import GatewayWebSocketConnection
from jupyter_server.serverapp import ServerApp
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from jupyter_server.services.kernels.handlers import _kernel_action_regex, _kernel_id_regex
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream
from zmq.eventloop.zmqstream import ZMQStream

__all__ = [
    "HTTPServerHooks",
    "KernelManagerHooks",
    "MappingKernelManagerHooks",
    "RestarterHooks",
    "ServerAppHooks",
    "GatewayWebSocketConnectionHooks",
    "activity_stream",
    "add_seen_digest",
    "connection_count",
    "context_has_open_sockets",
    "default_token",
    "disown_context",
    "http_error_text",
    "isoformat",
    "kernel_action_regex",
    "kernel_id_regex",
    "managed_kernels",
    "offline_buffers",
    "open_kernel_connections",
    "owns_context",
    "patch_gateway_request",
    "pending_starts",
    "queued_write",
    "set_activity_stream",
    "utcnow",
]

# jupyter_server's own clock for ``last_activity`` (``jupyter_server._tz``, a private module):
# our activity marks are compared with jupyter_server's, so they come from the same function.
# ``utcnow``/``isoformat`` are re-exported as they are.

#: jupyter_server's URL patterns for a kernel id and a kernel action, so our handlers match
#: exactly the paths jupyter_server's would (private module constants).
kernel_id_regex: str = _kernel_id_regex
kernel_action_regex: str = _kernel_action_regex


# -- MappingKernelManager's tables --------------------------------------------------------------
# jupyter_server keeps these as private traits; `list_kernel_ids`/`get_kernel` cover reads of
# one kernel but not the table itself (to pop a kernel without shutting it down), the pending
# starts, the connection counts or the offline buffers.


def managed_kernels(manager: t.Any) -> dict[str, t.Any]:
    """The manager's ``kernel_id -> KernelManager`` table (``MultiKernelManager._kernels``).

    Needed to pop a kernel without stopping it (detaching at gateway exit) and to scan every
    kernel without a ``get_kernel`` call each. Can go if jupyter_client grows a ``detach``.
    An object without the table (not a MultiKernelManager) has no kernels.
    """
    kernels = getattr(manager, "_kernels", None)
    return kernels if isinstance(kernels, dict) else {}


def pending_starts(manager: t.Any) -> dict[str, t.Any]:
    """Starts in flight (``MultiKernelManager._pending_kernels``: kernel id -> future).

    jupyter_server's ``shutdown_all`` raises on a start that failed and stayed here, so the
    gateway forgets failed starts; hydration must not take over a kernel still starting here.
    """
    pending = getattr(manager, "_pending_kernels", None)
    return pending if isinstance(pending, dict) else {}


def connection_count(manager: t.Any, kernel_id: str) -> int:
    """Open websockets on ``kernel_id`` (``MappingKernelManager._kernel_connections``).

    The public ``connections`` attribute is per kernel *manager*; the per-kernel count is what
    jupyter_server's own culler reads, and so does ours.
    """
    counts = getattr(manager, "_kernel_connections", None) or {}
    return int(counts.get(kernel_id, 0))


def offline_buffers(manager: t.Any) -> dict[str, dict[str, t.Any]]:
    """``MappingKernelManager._kernel_buffers``: kernel id -> ``{"buffer", "channels", ...}``.

    jupyter_server fills it in ``start_buffering``; the gateway bounds each buffer
    (``gateway.transport.offlinebuffer``) and closes its streams when detaching.
    """
    buffers = getattr(manager, "_kernel_buffers", None)
    return buffers if isinstance(buffers, dict) else {}


def activity_stream(kernel: t.Any) -> ZMQStream | None:
    """The IOPub stream jupyter_server's activity watcher reads (``kernel._activity_stream``)."""
    return getattr(kernel, "_activity_stream", None)


def set_activity_stream(kernel: t.Any, stream: ZMQStream) -> None:
    """Install our activity watcher's stream where jupyter_server keeps its own, so that
    jupyter_server's ``shutdown_kernel``/``restart_kernel`` close it as they close theirs."""
    kernel._activity_stream = stream


class MappingKernelManagerHooks(AsyncMappingKernelManager):
    """``_handle_kernel_died`` (the restarter's "dead" callback) as :meth:`kernel_died`."""

    def _handle_kernel_died(self, kernel_id: str) -> None:
        self.kernel_died(kernel_id)

    def kernel_died(self, kernel_id: str) -> None:
        """A kernel's restarter gave up on it; upstream forgets the kernel."""
        super()._handle_kernel_died(kernel_id)


# -- one kernel's manager ------------------------------------------------------------------------


class KernelManagerHooks(AsyncIOLoopKernelManager):
    """Socket creation and connection-file bookkeeping of jupyter_client's kernel manager."""

    def _create_connected_socket(self, channel: str, identity: bytes | None = None
                                 ) -> zmq.Socket:
        return self.create_connected_socket(channel, identity)

    def create_connected_socket(self, channel: str, identity: bytes | None = None
                                ) -> zmq.Socket:
        """A socket connected to the kernel's ``channel`` (every ``connect_*`` comes here)."""
        return super()._create_connected_socket(channel, identity)

    def channel_url(self, channel: str) -> str:
        """The ZeroMQ endpoint of ``channel`` from the connection info (``_make_url``)."""
        return str(self._make_url(channel))

    def mark_connection_file_written(self, written: bool) -> None:
        """jupyter_client asks ``_connection_file_written`` before cleaning the file up; the
        key of a kernel in a pod is never written, but the flag must say what happened."""
        self._connection_file_written = written

    def close_control_socket(self) -> None:
        """Close the manager's own control socket without shutting the kernel down."""
        self._close_control_socket()


def owns_context(kernel_manager: t.Any) -> bool:
    """Whether the kernel manager created its ZeroMQ context (``_created_context``), in which
    case jupyter_client's ``__del__`` terminates it."""
    return bool(getattr(kernel_manager, "_created_context", False))


def disown_context(kernel_manager: t.Any) -> None:
    """Make jupyter_client's ``__del__`` leave the context alone (we end it ourselves). Can go
    when jupyter_client's ``__del__`` stops calling ``term``."""
    kernel_manager._created_context = False


def context_has_open_sockets(context: zmq.Context[t.Any]) -> bool:
    """Whether a socket this pyzmq context wrapper made is still open (pyzmq's ``_sockets``:
    a weak set of the sockets the wrapper created; there is no public listing)."""
    return any(not sock.closed for sock in list(getattr(context, "_sockets", ())))


class RestarterHooks(AsyncIOLoopKernelRestarter):
    """The restart bookkeeping of jupyter_client's ``KernelRestarter``, by public names.

    ``ElasticKernelRestarter`` decides deaths from watch events instead of the restarter's
    poll, and must keep the restarter's counters as the poll would.
    """

    @property
    def polling(self) -> bool:
        """Whether the periodic poll is scheduled (``_pcallback``)."""
        return self._pcallback is not None

    @property
    def restarting(self) -> bool:
        return bool(self._restarting)

    @restarting.setter
    def restarting(self, value: bool) -> None:
        self._restarting = value

    @property
    def restart_count(self) -> int:
        return int(self._restart_count)

    @restart_count.setter
    def restart_count(self, value: int) -> None:
        self._restart_count = value

    @property
    def last_dead(self) -> float:
        """When the kernel was last found dead (``time.time()``)."""
        return float(self._last_dead)

    def mark_started(self) -> None:
        """The kernel lived ``stable_start_time``: a restart is done, and deaths from now on
        are not "initial startup" failures."""
        self._initial_startup = False
        self._restarting = False

    def fire(self, event: str) -> None:
        """Call the callbacks registered for ``event`` ("restart" or "dead")."""
        self._fire_callbacks(event)


# -- the session ------------------------------------------------------------------------------


def add_seen_digest(session: Session, signature: bytes) -> None:
    """Record a message signature as seen, as ``Session.deserialize`` does, so a replayed
    message is refused (``Session._add_digest``). Our splice path verifies signatures without
    ``deserialize`` and must keep the same replay history."""
    session._add_digest(signature)


# -- websockets ---------------------------------------------------------------------------------


def open_kernel_connections() -> list[ZMQChannelsWebsocketConnection]:
    """Every open kernel websocket connection of this process
    (``ZMQChannelsWebsocketConnection._open_sockets``, a class-level list upstream keeps)."""
    return list(ZMQChannelsWebsocketConnection._open_sockets)


def patch_gateway_request(wrap: Callable[[Callable[..., t.Any]], Callable[..., t.Any]]) -> None:
    """Replace ``jupyter_server.gateway.managers.gateway_request`` by ``wrap(original)``, once.

    The project's one monkeypatch (the notebook-server extension's readable gateway errors):
    jupyter_server raises gateway errors as ``HTTPError(code, "Error from Gateway: [%s] %s.
    ...", message, reason)`` and its API handlers show the unformatted template. It can go when
    those handlers format ``log_message`` with its arguments.
    """
    from jupyter_server.gateway import managers

    if getattr(managers.gateway_request, "_elastic_kernels_wrapped", False):
        return
    wrapped = wrap(managers.gateway_request)
    wrapped._elastic_kernels_wrapped = True  # type: ignore[attr-defined]
    managers.gateway_request = wrapped


class GatewayWebSocketConnectionHooks(GatewayWebSocketConnection):
    """jupyter_server's relay of one browser kernel websocket to the gateway, with its two
    private steps under public names: ``_connection_done`` (the gateway leg's handshake ended,
    a done-callback of ``ws_future``) as :meth:`gateway_connection_done`, and
    ``_read_messages`` (relay the gateway leg's messages to the browser until it ends, then
    reconnect it) as :meth:`relay_from_gateway`. Both default to upstream's own code."""

    def _connection_done(self, fut: t.Any) -> None:
        self.gateway_connection_done(fut)

    def gateway_connection_done(self, fut: t.Any) -> None:
        """Runs first when ``ws_future`` is done, before any queued browser message is sent."""
        super()._connection_done(fut)

    async def _read_messages(self) -> None:
        await self.relay_from_gateway()

    async def relay_from_gateway(self) -> None:
        """Runs after :meth:`gateway_connection_done`, whether the handshake failed or not."""
        await super()._read_messages()


# -- tornado ------------------------------------------------------------------------------------


def http_error_text(exc: web.HTTPError) -> str | None:
    """An HTTPError's message with its %-arguments filled in (tornado keeps the template in
    ``_log_message`` on newer versions, ``log_message`` on older ones)."""
    raw = getattr(exc, "_log_message", None)
    if raw is None:
        raw = exc.log_message
    if not raw or not exc.args:
        return raw
    try:
        return str(raw % exc.args)
    except (TypeError, ValueError):
        return str(raw)


def queued_write(stream: IOStream) -> tuple[int, int]:
    """Bytes in a tornado stream's write buffer and the number of pending write futures
    (``_write_buffer``, ``_write_futures``): what a websocket client has not read yet."""
    buffer = getattr(stream, "_write_buffer", None)
    futures = getattr(stream, "_write_futures", ())
    return (len(buffer) if buffer is not None else 0), len(futures)


class HTTPServerHooks(HTTPServer):
    """tornado's ``TCPServer`` listener bookkeeping, so a subclass can use its own accept loop
    and count open connections (``_connections``, ``_sockets``, ``_handlers``)."""

    @property
    def open_connection_count(self) -> int:
        return len(self._connections)

    def add_sockets(self, sockets: Iterable[t.Any]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = self.accept_handler(sock, self._handle_connection)

    def accept_handler(self, sock: t.Any, callback: Callable[[t.Any, t.Any], None]
                       ) -> Callable[[], None]:
        """Start accepting on ``sock``; returns what stops it (as ``add_accept_handler``)."""
        from tornado.netutil import add_accept_handler
        return add_accept_handler(sock, callback)


# -- ServerApp ----------------------------------------------------------------------------------


class ServerAppHooks(ServerApp):
    """ServerApp's start and stop steps (``_post_start``, ``_cleanup``, ``_signal_stop``,
    ``_stopping``, ``_http_server``) by public names, for embedding and for the gateway."""

    async def _post_start(self) -> None:
        await self.before_post_start()
        await super()._post_start()

    async def before_post_start(self) -> None:
        """Runs once the server listens, before jupyter_server's own post-start steps."""

    async def post_start(self) -> None:
        """ServerApp's post-start steps, for a server started on a running loop."""
        await self._post_start()

    async def _cleanup(self) -> None:
        await self.before_cleanup()
        try:
            await super()._cleanup()
        finally:
            await self.after_cleanup()

    async def before_cleanup(self) -> None:
        """Runs first when the server stops."""

    async def after_cleanup(self) -> None:
        """Runs last when the server stops, even if jupyter_server's cleanup failed."""

    async def stop_and_cleanup(self) -> None:
        """Stop as ``stop()`` would, on the running loop (for embedding)."""
        self._stopping = True
        await self._cleanup()

    @property
    def signal_stop(self) -> Callable[..., t.Any]:
        """ServerApp's handler that stops the server on a signal, without the prompt."""
        return t.cast("Callable[..., t.Any]", self._signal_stop)

    @property
    def http_server(self) -> HTTPServer:
        return self._http_server

    @http_server.setter
    def http_server(self, server: HTTPServer) -> None:
        self._http_server = server


def default_token(provider: IdentityProvider) -> str:
    """jupyter_server's default token (from ``JUPYTER_TOKEN``/``_FILE``, else generated), for a
    subclass that overrides the default and falls back to upstream's."""
    return str(IdentityProvider._token_default(provider))
