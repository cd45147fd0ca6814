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

* :class:`ZMQWakeupGuard`: a cheap periodic re-check over the streams the gateway reads.  A
  receiving stream whose descriptor is *not* readable (so the loop will not be woken for it)
  while ``EVENTS`` shows input is flushed through its normal callback, so a lost wakeup costs a
  bounded delay instead of the kernel.  ``ZMQStream.flush`` delivers in order and suppresses
  the handler already scheduled for that loop iteration, so nothing is delivered twice.
* :func:`recv_multipart_checked`: the pattern for any gateway code that must await a reply on an
  asyncio socket: wait with a short timeout and re-check ``EVENTS`` before waiting again.

Why the descriptor is looked at first: reading ``EVENTS`` is itself a ZeroMQ call that consumes
the wakeup.  A guard that read ``EVENTS`` on a stream whose wakeup was still on its way to the
loop, and then left the input for the loop to deliver, *caused* the lost wakeup it recovered an
interval later; at 1,000 kernels that was thousands of messages (most of the "recovered" count)
each delayed by a whole interval, during kernel starts above all.  Polling the descriptor
(``poll`` with no timeout; reading ``ZMQ_FD`` does not touch the mailbox) costs no wakeup: when
it is readable the loop will run the stream's handler, and only otherwise is ``EVENTS`` read, and
any input found then is delivered at once.

Why the guard has two classes of streams: a wakeup can only be lost around ZeroMQ calls on a
socket, i.e. while its kernel exchanges messages.  An idle kernel's streams have nothing to
deliver, yet re-checking every stream of every held kernel each interval made the guard the
gateway's largest idle cost (a quarter of a core at 500 kernels, ~5 streams each).  So streams
of *active* kernels (the caller decides: recent activity, busy) are re-checked every sweep, and
*all* streams are also re-checked at a slow cadence, a small slice per sweep, round-robin, so
that no sweep blocks the loop for long and a wakeup lost on a kernel not (yet) counted as active
is still recovered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import select
import typing as t

import zmq
import zmq.asyncio
from tornado.ioloop import PeriodicCallback
from zmq.eventloop.zmqstream import ZMQStream

__all__ = ["ZMQWakeupGuard", "recheck_stream", "recv_multipart_checked"]

log = logging.getLogger(__name__)

# Plain ints: ``int & zmq.POLLIN`` goes through enum.Flag and builds an enum member each time,
# which was a fifth of the guard's cost in a profile.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_FD = int(zmq.FD)


def _pending(stream: ZMQStream) -> bool:
    """Is input waiting on a stream that has a receive callback?  (Consumes its wakeup.)"""
    try:
        if stream.closed() or not stream.receiving():
            return False
        return bool(t.cast(int, stream.socket.getsockopt(_EVENTS)) & _POLLIN)
    except (zmq.ZMQError, OSError):
        # Closed (or its context terminated) under us; nothing to deliver.
        return False


def _stranded(stream: ZMQStream) -> bool:
    """Is input waiting on a receiving stream that no wakeup will announce to the loop?"""
    try:
        if stream.closed() or not stream.receiving():
            return False
        fd = t.cast(int, stream.socket.getsockopt(_FD))  # no ZeroMQ command processing: no wakeup
        # poll, not select: a gateway holding many kernels has descriptors far above select's
        # FD_SETSIZE (1,024), where select raises and the guard would skip the stream.
        readable = select.poll()
        readable.register(fd, select.POLLIN)
        if readable.poll(0):
            return False  # the loop will be woken and run the stream's handler
        return bool(t.cast(int, stream.socket.getsockopt(_EVENTS)) & _POLLIN)
    except (zmq.ZMQError, OSError, ValueError):
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

    A stream is *stranded* when input waits on it but its descriptor is not readable, so the
    event loop will not run its handler until more input arrives, perhaps never.  A sweep
    flushes every stranded stream it looks at, counts the messages in ``recovered`` and logs
    them.  (A stream whose own handler has just re-scheduled itself also looks stranded for that
    moment; flushing it only delivers a moment sooner, and it is counted.)

    Each sweep looks at:

    * the *active* streams, ``active()`` (every stream, ``streams()``, when ``active`` is None);
      worst-case delay of a lost wakeup there: one interval;
    * a slice of *every* stream, round-robin: ``streams()`` is called once per round (not per
      sweep), and the round is spread over ``idle_sweeps`` sweeps, so a sweep looks at about
      ``len(streams) / idle_sweeps`` of them.  Each stream is seen once per round; the gap
      between two looks is at most ``2 * idle_sweeps - 1`` sweeps (seen first in one round and
      last in the next; about ``idle_sweeps`` while the set of streams is stable), so that is
      the worst-case delay, in intervals, for a stream never counted active.  Streams that
      appear during a round wait for the next one.

    The cost of a sweep is therefore proportional to the active streams plus a bounded slice,
    not to every stream held.
    """

    def __init__(
        self,
        streams: t.Callable[[], t.Iterable[ZMQStream]],
        interval: float,
        logger: logging.Logger | None = None,
        *,
        active: t.Callable[[], t.Iterable[ZMQStream]] | None = None,
        idle_sweeps: int = 1,
    ) -> None:
        self._streams = streams
        self._active = active
        self.interval = interval
        self.idle_sweeps = idle_sweeps
        """Sweeps over which every stream is re-checked once (at least 1)."""
        self.log = logger or log
        self.recovered = 0
        """Messages delivered by the guard rather than by a wakeup (a metric)."""
        self.checked = 0
        """Streams whose ``EVENTS`` the guard has read (a metric: its cost)."""
        self._round: list[ZMQStream] = []
        self._cursor = 0
        self._slice = 1
        self._callback: PeriodicCallback | None = None

    def start(self) -> None:
        if self.interval <= 0 or self._callback is not None:
            return
        self._callback = PeriodicCallback(self._sweep, self.interval * 1000)
        self._callback.start()

    def stop(self) -> None:
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        self._round = []
        self._cursor = 0

    def _idle_slice(self) -> list[ZMQStream]:
        """This sweep's share of the round over every stream (a new round when one ends)."""
        if self._cursor >= len(self._round):
            seen: set[int] = set()
            round_: list[ZMQStream] = []
            for stream in self._streams():
                if stream is not None and id(stream) not in seen:
                    seen.add(id(stream))
                    round_.append(stream)
            self._round = round_
            self._cursor = 0
            self._slice = max(1, math.ceil(len(round_) / max(1, self.idle_sweeps)))
        part = self._round[self._cursor:self._cursor + self._slice]
        self._cursor += self._slice
        if self._cursor >= len(self._round):
            self._round = []  # let closed streams go; the next sweep starts a new round
        return part

    def _sweep(self) -> None:
        self.sweep()  # PeriodicCallback wants a callable that returns nothing

    def sweep(self) -> int:
        """One pass; returns how many messages it had to deliver."""
        if self._active is None:
            candidates: t.Iterable[ZMQStream] = self._streams()
            slice_: list[ZMQStream] = []
        else:
            candidates = self._active()
            slice_ = self._idle_slice()
        delivered = 0
        checked = 0
        seen: set[int] = set()
        for group in (candidates, slice_):
            for stream in group:
                key = id(stream)
                if stream is None or key in seen:
                    continue
                seen.add(key)
                checked += 1
                if not _stranded(stream):
                    continue
                try:
                    count = stream.flush(zmq.POLLIN)
                except (zmq.ZMQError, OSError):
                    count = 0
                if count:
                    delivered += count
                    self.log.warning(
                        "Delivered %d kernel message(s) whose ZeroMQ wakeup was lost (%s)",
                        count,
                        getattr(stream, "channel", "stream"),
                    )
        self.checked += checked
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
    sync: zmq.Socket[bytes] = zmq.Socket.shadow(socket.underlying)
    while True:
        if t.cast(int, sync.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            try:
                return sync.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                pass
        wait = recheck_interval
        if deadline is not None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no message within {timeout} s")
            wait = min(wait, remaining)
        # If this wakeup is lost we are back at the EVENTS check after ``wait`` seconds.
        await socket.poll(max(1, int(wait * 1000)))  # flags: POLLIN by default
