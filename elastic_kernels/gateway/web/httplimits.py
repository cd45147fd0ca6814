"""Limits on the gateway's connections: descriptors, slow clients, and the log they can flood.

Why: before any token is checked, a connection costs the gateway a file descriptor, and tornado
gave each one an hour to send its request headers and for ever to send a body. Thousands of
connections that send half a header (slowloris) or a body a byte at a time exhausted the
gateway's descriptors, and then every accept failed with ``EMFILE``: tornado's accept handler
does not catch it, the listening socket stays readable, and the event loop spun on it, logging a
traceback per attempt (measured: 90,000 log lines in 3 s from 200 connections under a 100
descriptor limit), while the descriptors the kernels' ZeroMQ sockets need were gone too.

What this module provides (wired in by ``ElasticGatewayApp.init_httpserver``; the timeouts
themselves are tornado's ``idle_connection_timeout`` and ``body_timeout``):

* :class:`ConnectionCap`: at most N connections at once, counting HTTP connections and upgraded
  kernel websockets; one more is answered with a JSON 503 and closed at once, so descriptors
  run out for nobody (by default half the process's open-file limit, leaving the other half to
  the kernels' sockets);
* :func:`add_accept_handler`: tornado's accept loop, except that running out of descriptors
  (or kernel memory) pauses accepting for a moment with one log line instead of spinning;
* :class:`UserSlots`: kernel websockets per user, taken before the upgrade (so a burst of
  concurrent upgrades cannot overshoot) and given back when the connection ends;
* :class:`LogFloodFilter`: the log lines one bad connection causes (malformed requests, body
  timeouts, TLS errors, refused and unaccepted connections) at most ``burst`` per ``window`` for
  each kind, then one line saying how many were suppressed.

Private names: the accept loop calls ``TCPServer._handle_connection``, tornado's per-connection
entry point, which has no public equivalent for a server that accepts its own connections; it
can go when tornado's ``add_accept_handler`` handles ``EMFILE`` itself.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import resource
import socket
import threading
import typing as t
from collections.abc import Callable

from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

__all__ = ["ConnectionCap", "LogFloodFilter", "UserSlots", "add_accept_handler",
           "raise_open_files_limit",
           "default_max_connections", "install_log_flood_filter"]

#: Errors of accept() that say the process or system is out of a resource, not that this one
#: connection failed: retrying at once fails the same way.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

#: Connections accepted per readiness event, as tornado's own accept loop (its listen backlog).
_ACCEPTS_PER_EVENT = 128

REFUSED_MESSAGE = "Refused a connection from %s: %d connections open (max_connections %d)"
ACCEPT_PAUSED_MESSAGE = "Cannot accept connections (%s); pausing accepts for %.1f s"

#: The log lines, by the start of their message template, that one connection can cause, so an
#: attacker can repeat them at will. Each kind gets its own budget.
NOISY_MESSAGES: tuple[str, ...] = (
    "Malformed HTTP message from",  # tornado, a request that does not parse
    "Timeout reading body from",  # tornado, http_body_timeout
    "SSL Error on",  # tornado, a TLS handshake that fails
    "Error in connection callback",  # tornado, a connection that fails while being set up
    "Uncaught exception, closing connection",  # tornado, an error in a connection's callback
    "Exception in callback BaseAsyncIOLoop._handle_events",  # asyncio, e.g. a failing accept
    "Task exception was never retrieved",  # asyncio, e.g. writes to a closed websocket
    REFUSED_MESSAGE.split("%", 1)[0],
    ACCEPT_PAUSED_MESSAGE.split("(", 1)[0],
)


def default_max_connections() -> int:
    """Half the process's open-file limit: the other half stays for the kernels' sockets."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(16, soft // 2)


class ConnectionCap:
    """How many connections the server may hold at once (HTTP, and upgraded websockets, which
    tornado no longer counts as HTTP connections)."""

    def __init__(self, limit: int, websockets: Callable[[], int],
                 log: logging.Logger) -> None:
        self.limit = limit
        self.websockets = websockets
        self.log = log
        self.refused = 0
        self.open_now = 0
        self.lingering = 0

    def admit(self, http_connections: int) -> bool:
        self.open_now = http_connections + self.websockets()
        return self.limit <= 0 or self.open_now < self.limit

    def refuse(self, stream: IOStream, address: t.Any) -> None:
        """Answer 503 with a JSON reason and close, without reading the request."""
        self.refused += 1
        peer = address[0] if isinstance(address, tuple) and address else "?"
        self.log.warning(REFUSED_MESSAGE, peer, self.open_now, self.limit)
        body = json.dumps({"message": "The gateway has too many connections open; retry later.",
                           "reason": "TooManyConnections"}).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\nRetry-After: 5\r\n\r\n")
        try:
            written = stream.write(head.encode() + body)
        except Exception:  # noqa: BLE001 - the peer is already gone
            stream.close()
            return
        if self.lingering >= self.MAX_LINGERING:
            # Under a flood of refusals, descriptors matter more than a clean answer.
            written.add_done_callback(lambda _f: stream.close())
            return
        self.lingering += 1
        task = asyncio.ensure_future(self._linger_close(stream, written))
        task.add_done_callback(lambda _t: setattr(self, "lingering", self.lingering - 1))

    #: Refused connections closed gracefully at once; past this, they are closed at once.
    MAX_LINGERING = 64
    LINGER_SECONDS = 2.0

    async def _linger_close(self, stream: IOStream, written: t.Any) -> None:
        """Close after the answer, as a web server's lingering close: stop writing, then read
        and discard what the client still sends, for a moment. Closing a socket that has
        unread input resets the connection, and the client would lose the answer."""
        try:
            await asyncio.wait_for(written, self.LINGER_SECONDS)
            stream.socket.shutdown(socket.SHUT_WR)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.LINGER_SECONDS
            while True:
                await asyncio.wait_for(stream.read_bytes(65536, partial=True),
                                       max(0.0, deadline - loop.time()))
        except Exception as e:  # noqa: BLE001 - closed by the peer, timed out, or reset
            self.log.debug("Refused connection closed: %s", type(e).__name__)
        finally:
            stream.close()


def add_accept_handler(sock: socket.socket, callback: Callable[[socket.socket, t.Any], None],
                       log: logging.Logger, pause: float = 0.5) -> Callable[[], None]:
    """``tornado.netutil.add_accept_handler``, except when accept() fails for want of a
    resource: then accepting pauses for ``pause`` seconds (connections wait in the listen
    backlog) and that is logged, instead of the loop retrying, failing and logging at once.

    Returns the function that stops accepting.
    """
    io_loop = IOLoop.current()
    state: dict[str, t.Any] = {"removed": False, "timer": None}

    def resume() -> None:
        state["timer"] = None
        if not state["removed"]:
            io_loop.add_handler(sock, on_readable, IOLoop.READ)

    def on_readable(fd: t.Any, events: int) -> None:
        for _ in range(_ACCEPTS_PER_EVENT):
            if state["removed"] or state["timer"] is not None:
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                if e.errno not in _EXHAUSTED:
                    raise
                log.warning(ACCEPT_PAUSED_MESSAGE, e.strerror or e, pause)
                io_loop.remove_handler(sock)
                state["timer"] = io_loop.call_later(pause, resume)
                return
            callback(connection, address)

    def remove() -> None:
        if state["removed"]:
            return
        state["removed"] = True
        if state["timer"] is not None:
            io_loop.remove_timeout(state["timer"])
            state["timer"] = None
        else:
            io_loop.remove_handler(sock)

    io_loop.add_handler(sock, on_readable, IOLoop.READ)
    return remove


class UserSlots:
    """Kernel websockets per user: a slot is taken before the upgrade and given back once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: dict[str, int] = {}

    def acquire(self, user: str) -> bool:
        count = self.held.get(user, 0)
        if 0 < self.limit <= count:
            return False
        self.held[user] = count + 1
        return True

    def release(self, user: str) -> None:
        count = self.held.get(user, 0) - 1
        if count > 0:
            self.held[user] = count
        else:
            self.held.pop(user, None)


class _Kind:
    """The budget of one kind of noisy record."""

    __slots__ = ("logger", "passed", "start", "suppressed", "timer")

    def __init__(self, start: float, logger: str) -> None:
        self.start = start
        self.passed = 0
        self.suppressed = 0
        self.logger = logger
        self.timer = False


class LogFloodFilter(logging.Filter):
    """At most ``burst`` records of each kind in :data:`NOISY_MESSAGES` per ``window`` seconds;
    the rest are counted, and one record says how many when the window ends (logged from the
    event loop through the logger of the last one suppressed). Other records pass untouched.

    One filter may sit on several handlers that see the same record: its decision is kept on
    the record, so a record is counted once.
    """

    SUMMARY_ATTR = "elastic_flood_summary"
    _DECISION_ATTR = "elastic_flood_passed"

    def __init__(self, burst: int = 10, window: float = 60.0,
                 kinds: tuple[str, ...] = NOISY_MESSAGES) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self.kinds = kinds
        self._lock = threading.Lock()
        self._state: dict[str, _Kind] = {}
        self.suppressed_total = 0

    def _kind(self, record: logging.LogRecord) -> str | None:
        msg = record.msg
        if not isinstance(msg, str) or getattr(record, self.SUMMARY_ATTR, False):
            return None
        for kind in self.kinds:
            if msg.startswith(kind):
                return kind
        return None

    def filter(self, record: logging.LogRecord) -> bool:
        decided = record.__dict__.get(self._DECISION_ATTR)
        if decided is not None:
            return bool(decided)
        kind = self._kind(record) if self.burst > 0 else None
        if kind is None:
            return True
        with self._lock:
            passed = self._count(kind, record)
        record.__dict__[self._DECISION_ATTR] = passed
        return passed

    def _count(self, kind: str, record: logging.LogRecord) -> bool:
        now = record.created
        state = self._state.get(kind)
        if state is None:
            state = self._state[kind] = _Kind(now, record.name)
        elif now - state.start >= self.window:
            state.start, state.passed = now, 0
        if state.passed < self.burst:
            state.passed += 1
            return True
        state.suppressed += 1
        state.logger = record.name
        self.suppressed_total += 1
        if not state.timer:
            state.timer = self._schedule(kind, state.start + self.window - now)
        return False

    def _schedule(self, kind: str, delay: float) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False  # not on the event loop's thread: the next suppression schedules it
        loop.call_later(max(0.0, delay), self.report, kind)
        return True

    def report(self, kind: str) -> None:
        """Log how many records of ``kind`` were suppressed since the last report."""
        with self._lock:
            state = self._state.get(kind)
            if state is None:
                return
            count, state.suppressed, state.timer = state.suppressed, 0, False
        if count:
            logging.getLogger(state.logger).warning(
                "Suppressed %d more log messages starting %r in the last %g s", count, kind,
                self.window, extra={self.SUMMARY_ATTR: True})


def install_log_flood_filter(log: logging.Logger, burst: int, window: float) -> LogFloodFilter:
    """Filter ``log``'s handlers (tornado's loggers propagate into them in jupyter_server) and
    asyncio's logger. One filter per handler or logger, however often this runs (embedded
    gateways in tests share loggers): a second call only updates its settings."""
    targets: list[logging.Filterer] = [*log.handlers, logging.getLogger("asyncio")]
    found = [f for target in targets for f in target.filters if isinstance(f, LogFloodFilter)]
    flood = found[0] if found else LogFloodFilter(burst, window)
    flood.burst, flood.window = burst, window
    for target in targets:
        if flood not in target.filters:
            target.addFilter(flood)
    return flood


def raise_open_files_limit() -> None:
    """Lift the soft RLIMIT_NOFILE to the hard one: every kernel costs the gateway file
    descriptors (ZeroMQ sockets and their TCP connections), and distributions default the soft
    limit to 1,024. Process-wide, so the gateway app calls it when it starts serving, never a
    constructor."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = 1 << 20
        if soft != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass  # not permitted: keep what we have
