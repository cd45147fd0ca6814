"""A bound on the size of one kernel message, without losing the socket that hit it.

libzmq receives a message whole before anyone can look at it, so one kernel message of hundreds
of MB (a cell writing to stdout without flushing: ipykernel batches 0.2 s of output into one
``stream`` message; or a user sending a huge message on purpose) costs the gateway that much
memory on *every* socket subscribed to that kernel's iopub: the activity watcher, each
websocket, the offline buffer.  ``ZMQ_MAXMSGSIZE`` stops the receive past the bound, but libzmq
(4.3.5) then treats the connection as a protocol error: it closes it and, unlike after a
network error, never reconnects, so that socket would receive nothing ever again.

:class:`SizeGuard` watches one such socket's monitor.  A ``DISCONNECTED`` that is not followed
by a reconnect attempt (``CONNECT_RETRIED``, which libzmq emits at once after an ordinary
disconnect such as a kernel restart) is that protocol error: the guard disconnects and
re-connects the *same* socket to its current endpoint (a SUB keeps its subscriptions, a DEALER
its identity, the ``ZMQStream`` its callbacks) and calls ``on_drop`` so the socket's owner can
tell the user and re-sync.  The message itself is gone, as is what the kernel published in the
few milliseconds before the re-connect.

Costs: the monitor is two inproc PAIR sockets per guarded socket (libzmq's and ours).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import typing as t
import weakref

import zmq
from zmq.eventloop.zmqstream import ZMQStream
from zmq.utils.monitor import parse_monitor_message

__all__ = ["SizeGuard", "drop_notice"]

log = logging.getLogger(__name__)

_EVENTS = (zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECT_DELAYED
           | zmq.EVENT_CONNECTED | zmq.EVENT_MONITOR_STOPPED)
_serial = itertools.count()
_ALIVE = {int(zmq.EVENT_CONNECT_RETRIED), int(zmq.EVENT_CONNECT_DELAYED),
          int(zmq.EVENT_CONNECTED)}


def drop_notice(max_bytes: int) -> str:
    """What the user reads in the cell (or console) after a message was dropped."""
    return (f"\n[elastic-kernels] A kernel message larger than {max_bytes / 2**20:g} MiB was "
            "dropped by the gateway (output written without a flush, or a huge reply). "
            "Output continues.\n")


class SizeGuard:
    """Re-connects ``sock`` after libzmq dropped its connection over an oversized message.

    ``endpoint()`` says where the socket should be connected now (it changes when a kernel
    moves to a new pod); ``on_drop`` is called after each re-connect.  The guard stops by
    itself when the socket closes.
    """

    #: Seconds to wait for libzmq's own reconnect attempt before deciding it will not come.
    settle = 0.02

    def __init__(self, sock: zmq.Socket, endpoint: t.Callable[[], str | None],
                 on_drop: t.Callable[[], None]) -> None:
        self._sock = weakref.ref(sock)
        self._endpoint = endpoint
        self._on_drop = on_drop
        self._pending: dict[bytes, asyncio.TimerHandle] = {}
        # By hand rather than ``get_monitor_socket``: the kernel manager's context may be an
        # asyncio one, and ZMQStream wants a plain socket on the same context (inproc).
        address = f"inproc://elastic-size-guard-{id(self):x}-{next(_serial)}"
        sock.monitor(address, _EVENTS)
        monitor: zmq.Socket[bytes] = zmq.Context.shadow(sock.context.underlying).socket(zmq.PAIR)
        monitor.connect(address)
        self._stream = ZMQStream(monitor)
        self._stream.on_recv(self._event)

    def _event(self, parts: list[bytes]) -> None:
        try:
            event = parse_monitor_message(parts)
        except (ValueError, IndexError, TypeError):
            return
        kind = int(event["event"])
        endpoint = event["endpoint"]
        if kind == zmq.EVENT_MONITOR_STOPPED:
            self.close()
        elif kind == zmq.EVENT_DISCONNECTED:
            if endpoint not in self._pending:
                loop = asyncio.get_running_loop()
                self._pending[endpoint] = loop.call_later(self.settle, self._dropped, endpoint)
        elif kind in _ALIVE:
            timer = self._pending.pop(endpoint, None)
            if timer is not None:
                timer.cancel()

    def _dropped(self, endpoint: bytes) -> None:
        self._pending.pop(endpoint, None)
        sock = self._sock()
        url = self._endpoint()
        if sock is None or sock.closed or url is None or url.encode() != endpoint:
            return  # closed, or disconnected on purpose (the kernel moved to another pod)
        try:
            sock.disconnect(url)
        except zmq.ZMQError:
            pass  # libzmq already forgot the endpoint
        sock.connect(url)
        log.warning("Re-connected a kernel socket (%s) that dropped an oversized message", url)
        try:
            self._on_drop()
        except Exception:  # noqa: BLE001 - a listener's bug must not stop the re-connect
            log.exception("Listener for a dropped kernel message failed")

    def close(self) -> None:
        for timer in self._pending.values():
            timer.cancel()
        self._pending.clear()
        if not self._stream.closed():
            self._stream.close(linger=0)
