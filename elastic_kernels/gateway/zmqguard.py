"""Never wait for ever on a ZeroMQ wakeup that may not come.

Why this exists (DESIGN §7): a ZeroMQ socket's file descriptor is an *edge* signal.  It becomes
readable when the socket's command mailbox changes, and any ZeroMQ call on the socket (``EVENTS``,
``send``, ``recv``) may consume that signal.  An event loop that waits on the descriptor and does
not re-check ``EVENTS`` after every such call can sleep while messages sit in the queue, and
because ZeroMQ only signals again when the queue goes from empty to non-empty, it then sleeps for
ever.  pyzmq's asyncio sockets have been seen to do exactly that under concurrency.

What jupyter_server does (2.21): the websocket bridge reads kernel sockets through
``zmq.eventloop.zmqstream.ZMQStream``, i.e. *synchronous* sockets watched by tornado's loop, not
pyzmq's asyncio sockets.  ZMQStream re-checks ``EVENTS`` after each event it handles and after
each of its own sends, which covers the usual ways a signal is consumed.  jupyter_client's kernel
manager only *sends* on its asyncio control socket (shutdown/interrupt requests) and never awaits
a reply there.  So nothing in the stock path awaits an asyncio ``recv``; the residual risk is a
signal consumed outside ZMQStream's bookkeeping, which would leave a kernel's output stuck.

What we add:

* :class:`ZMQWakeupGuard`: a cheap periodic re-check (one ``getsockopt(EVENTS)`` per stream)
  over the streams the gateway reads.  A receiving stream whose input stays pending across two
  sweeps is flushed through its normal callback, so a lost wakeup costs at most two intervals
  instead of the kernel.  ``ZMQStream.flush`` delivers in order and suppresses the handler
  already scheduled for that loop iteration, so nothing is delivered twice.
* :func:`recv_multipart_checked`: the pattern for any gateway code that must await a reply on an
  asyncio socket: wait with a short timeout and re-check ``EVENTS`` before waiting again.
"""

from __future__ import annotations

import asyncio
import logging
import typing as t

import zmq
import zmq.asyncio
from tornado.ioloop import PeriodicCallback
from zmq.eventloop.zmqstream import ZMQStream

__all__ = ["ZMQWakeupGuard", "recheck_stream", "recv_multipart_checked"]

log = logging.getLogger(__name__)


def _pending(stream: ZMQStream) -> bool:
    """Is input waiting on a stream that has a receive callback?"""
    try:
        if stream.closed() or not stream.receiving():
            return False
        return bool(t.cast(int, stream.socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN)
    except (zmq.ZMQError, OSError):
        # Closed (or its context terminated) under us; nothing to deliver.
        return False


def recheck_stream(stream: ZMQStream) -> int:
    """Deliver input that is pending on ``stream`` now; return how many messages.

    Only streams with a receive callback are flushed: ``flush`` on a stream without one would
    discard the messages.
    """
    if not _pending(stream):
        return 0
    try:
        return stream.flush(zmq.POLLIN)
    except (zmq.ZMQError, OSError):
        return 0


class ZMQWakeupGuard:
    """Periodically deliver kernel messages whose wakeup was lost.

    A stream with input pending at one sweep may simply not have had its turn in the event loop
    yet.  Input still pending at the next sweep has waited a whole interval while the loop ran,
    so its wakeup was lost: only then is it flushed, counted in ``recovered`` and logged.  The
    worst-case delay is therefore two intervals.  ``streams`` is called on every sweep so it
    always sees the current connections.
    """

    def __init__(
        self,
        streams: t.Callable[[], t.Iterable[ZMQStream]],
        interval: float,
        logger: logging.Logger | None = None,
    ) -> None:
        self._streams = streams
        self.interval = interval
        self.log = logger or log
        self.recovered = 0
        """Messages delivered by the guard rather than by a wakeup (a metric)."""
        self._suspects: set[int] = set()
        self._callback: PeriodicCallback | None = None

    def start(self) -> None:
        if self.interval <= 0 or self._callback is not None:
            return
        self._callback = PeriodicCallback(self.sweep, self.interval * 1000)
        self._callback.start()

    def stop(self) -> None:
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        self._suspects = set()

    def sweep(self) -> int:
        """One pass; returns how many messages it had to deliver."""
        delivered = 0
        suspects: set[int] = set()
        seen: set[int] = set()
        for stream in list(self._streams()):
            key = id(stream)
            if stream is None or key in seen:
                continue
            seen.add(key)
            if not _pending(stream):
                continue
            if key not in self._suspects:
                suspects.add(key)
                continue
            count = recheck_stream(stream)
            if count:
                delivered += count
                self.log.warning(
                    "Delivered %d kernel message(s) whose ZeroMQ wakeup was lost (%s)",
                    count,
                    getattr(stream, "channel", "stream"),
                )
        self._suspects = suspects
        self.recovered += delivered
        return delivered


async def recv_multipart_checked(
    socket: zmq.asyncio.Socket,
    timeout: float | None = None,
    *,
    recheck_interval: float = 0.05,
) -> list[bytes]:
    """Receive one multipart message from an asyncio socket without trusting its wakeup.

    Waits at most ``recheck_interval`` at a time for the socket to signal, then looks at
    ``EVENTS`` itself.  Raises ``TimeoutError`` after ``timeout`` seconds (``None``: no limit).
    The caller must be the only reader of ``socket``.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    # A synchronous view of the same socket: non-blocking receives and EVENTS checks that do not
    # go through pyzmq's asyncio future machinery.
    sync = zmq.Socket.shadow(socket.underlying)
    while True:
        if t.cast(int, sync.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            try:
                return t.cast("list[bytes]", sync.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                pass
        wait = recheck_interval
        if deadline is not None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no message within {timeout} s")
            wait = min(wait, remaining)
        # If this wakeup is lost we are back at the EVENTS check after ``wait`` seconds.
        await socket.poll(timeout=max(1, int(wait * 1000)), flags=zmq.POLLIN)
