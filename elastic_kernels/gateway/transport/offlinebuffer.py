"""Output kept for a client that disconnected, bounded in bytes and in time.

When a kernel's last websocket closes, jupyter_server keeps that client's kernel sockets open
and stores every message they receive, to replay them if the same session reconnects (a laptop
that slept, a flaky network). Upstream stores them in a plain list, with no bound (its own code
says "TODO: the buffer should likely be a memory bounded queue"): a disconnected kernel that
keeps printing, a training loop logging progress overnight, grows the gateway's memory without
limit, and the gateway holds every user's kernels. It also keeps the sockets (four descriptors)
of every kernel whose client never comes back.

Here the buffer keeps the most recent ``max_bytes`` of messages (the oldest are dropped first,
counted and logged once per disconnection), and buffering ends after ``max_seconds`` without a
reconnect, which closes those sockets. A client reconnecting later finds the kernel as it is,
as if buffering were off (``buffer_offline_messages = False``).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import typing as t
from elastic_kernels.upstream import offline_buffers

__all__ = ["OfflineBuffer", "bound_buffering"]

Message = tuple[str, list[t.Any]]


def _size(parts: t.Sequence[t.Any]) -> int:
    return sum(len(p) for p in parts)


class OfflineBuffer(collections.deque):
    """A deque of ``(channel, message parts)`` as jupyter_server replays it, in a byte bound."""

    def __init__(self, max_bytes: int, on_first_drop: t.Callable[[], None] | None = None) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.bytes = 0
        self.dropped = 0
        self._on_first_drop = on_first_drop

    def add(self, channel: str, parts: list[t.Any]) -> None:
        """Keep a message; drop the oldest ones while the buffer is over its bound."""
        size = _size(parts)
        self.append((channel, parts))
        self.bytes += size
        while self.bytes > self.max_bytes and self:
            _channel, old = self.popleft()
            self.bytes -= _size(old)
            self.dropped += 1
            if self.dropped == 1 and self._on_first_drop is not None:
                self._on_first_drop()


def bound_buffering(manager: t.Any, kernel_id: str, max_bytes: int, max_seconds: float) -> None:
    """Replace the buffer jupyter_server's ``start_buffering`` just set up with a bounded one.

    ``manager`` is a jupyter_server ``MappingKernelManager`` right after its ``start_buffering``
    for ``kernel_id``; nothing happens if it did not start buffering (buffering off, unknown
    kernel).
    """
    info = offline_buffers(manager).get(kernel_id)
    if not manager.buffer_offline_messages or not info or not info.get("channels"):
        return

    def full() -> None:
        manager.log.warning(
            "Kernel %s: output for its disconnected client passed %d bytes; keeping the most "
            "recent", kernel_id, max_bytes)

    buffer = OfflineBuffer(max_bytes, full)
    for channel, parts in info.get("buffer") or ():
        buffer.add(channel, parts)  # counted, in case upstream buffered before us
    info["buffer"] = buffer
    for channel, stream in info["channels"].items():
        stream.on_recv(functools.partial(buffer.add, channel))
    if max_seconds <= 0:
        return
    # A token, not the buffer: the timer must not keep a replayed buffer's messages alive.
    token = info["expiry_token"] = object()

    def expire() -> None:
        current = offline_buffers(manager).get(kernel_id)
        if current is None or current.get("expiry_token") is not token:
            return  # reconnected, restarted or shut down since
        manager.log.info("Kernel %s: no reconnect within %.0f s; no longer buffering its output",
                         kernel_id, max_seconds)
        manager.stop_buffering(kernel_id)

    asyncio.get_running_loop().call_later(max_seconds, expire)
